"""Closed-form products for one MAML inner step on :class:`GaussianMLPPolicy`.

MAML-TRPO's conjugate gradient multiplies by J^T F J on every iteration, J the Jacobian of
the adaptation phi_i = theta - lr * grad L_i(theta). With one inner step and a scalar step
size, J_i = I - lr * H_i (H_i the Hessian of task i's inner loss), so J_i is symmetric and
both J v and J^T u are Hessian-vector products of the inner loss at theta. For the
MLP policy those products are written out here (Pearlmutter's R-operator through the
forward and backward pass), on activations computed once per update, and the Fisher
product of the adapted policies likewise on activations at phi computed once. autograd
(:mod:`torch.func`) recomputes the forward and backward pass of the inner step in every
JVP and keeps more intermediates; on a 2-core CPU a conjugate-gradient iteration of the
benchmark's update (20 tasks, 2x512 tanh) takes ~250 ms here against ~420 ms with
torch.func, nearly all of it the 16 large matrix products the iteration cannot avoid.

:class:`MamlLearner` uses this where it applies (:func:`supports`) and its generic
``torch.func`` path elsewhere (several inner steps, learned step sizes, other policies);
``tests/test_maml_mlp.py`` checks every product here against that path (to 1e-10 in
float64, a clamped std included) and ``tests/test_maml.py`` the whole step.

Shapes: N tasks, S steps per task, layer l maps (.., in_l) -> (.., out_l). A direction is
a dict like theta, either shared by all tasks (no N dim) or per task (leading N dim).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from metarl.policies import GaussianMLPPolicy, Params

if TYPE_CHECKING:
    from metarl.algos.maml import TaskData


def supports(policy: torch.nn.Module, num_inner_steps: int, learn_inner_lr: bool) -> bool:
    """Whether :class:`MlpMamlProducts` computes this learner's products."""
    return (type(policy) is GaussianMLPPolicy and policy.spec.std_type == "param"
            and policy._log_max_std is None  # the closed form clamps the std from below only
            and policy.spec.activation in ("tanh", "relu") and num_inner_steps == 1 and not learn_inner_lr)


def _layer_keys(policy: GaussianMLPPolicy) -> list[str]:
    """Parameter-name prefixes of the linear layers, input to output."""
    hidden = [f"trunk.{2 * i}" for i in range(len(policy.spec.hidden_sizes))]
    return [*hidden, "mean"]


def _t(w: Tensor) -> Tensor:
    return w.transpose(-1, -2)


def _flat_steps(x: Tensor) -> Tensor:
    """(N, S, k) -> (N * S, k): a sum over steps and tasks becomes one matrix product."""
    return x.reshape(-1, x.shape[-1])


def _linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x @ w^T + b with the bias added in the product: x (N, S, in), w (out, in) and b (out,)
    shared, or w (N, out, in) and b (N, out) per task."""
    if w.dim() == 2:
        return torch.addmm(b, _flat_steps(x), _t(w)).view(*x.shape[:-1], w.shape[0])
    return torch.baddbmm(b.unsqueeze(-2), x, _t(w))


def _add_matmul_(out: Tensor, x: Tensor, m: Tensor) -> Tensor:
    """out += x @ m in place: x (N, S, k), m shared (k, j) or per task (N, k, j)."""
    if m.dim() == 2:
        out.view(-1, out.shape[-1]).addmm_(_flat_steps(x), m)
    else:
        out.baddbmm_(x, m)
    return out


class _Pass:
    """Forward and backward pass of the policy on one batch, kept for R-operator products."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, obs: Tensor, per_task: bool) -> None:
        self.keys = _layer_keys(policy)
        self.tanh = policy.spec.activation == "tanh"
        self.params, self.per_task = params, per_task
        self.inputs: list[Tensor] = [obs]  # input of each layer
        self.dact: list[Tensor] = []  # activation derivative after each hidden layer
        h = obs
        for key in self.keys[:-1]:
            z = _linear(h, params[f"{key}.weight"], params[f"{key}.bias"])
            if self.tanh:
                h = torch.tanh(z)
                self.dact.append(torch.mul(h, h).neg_().add_(1))
            else:
                h = torch.relu(z)
                self.dact.append((z > 0).to(z.dtype))
            self.inputs.append(h)
        self.mean = _linear(h, params["mean.weight"], params["mean.bias"])
        log_std = params["log_std"]
        self.std_mask = (log_std >= policy._log_min_std).to(log_std.dtype)  # clamp_min's gradient
        self.std = log_std.clamp_min(policy._log_min_std).exp()

    def log_prob_gradient(self, coef: Tensor, actions: Tensor, lr: float | None = None) -> Params:
        """Per-task gradient of -sum(coef * log N(actions; mean, std)), coef (N, S, 1), or
        with ``lr`` the parameters one gradient step away (params - lr * gradient, computed
        in the same products). Keeps the backward pass for
        :meth:`MlpMamlProducts._adapt_product`."""
        std = self.std.unsqueeze(-2) if self.per_task else self.std
        self.coef, self.diff, self.inv_var = coef, actions - self.mean, std.reciprocal().square()
        out, self.deltas, self._qs = self.backward(-coef * self.diff * self.inv_var, lr)
        g_log_std = -(coef * (self.diff.square() * self.inv_var - 1)).sum(-2) * self.std_mask
        out["log_std"] = g_log_std if lr is None else self.params["log_std"] - lr * g_log_std
        return out

    @functools.cached_property
    def dact_terms(self) -> dict[int, Tensor]:
        """R{1 - h^2} = -2 h R{h} (tanh): the backward pass's R-term is this times R{h}."""
        return {i: (q * self.inputs[i]).mul_(-2) for i, q in self._qs.items()} if self.tanh else {}

    def r_forward(self, v: Params) -> list[Tensor]:
        """R{input of each layer} and R{mean} (last) in direction ``v`` (shared or per task)."""
        rs: list[Tensor] = []
        rh: Tensor | None = None
        for i, key in enumerate(self.keys):
            rz = _linear(self.inputs[i], v[f"{key}.weight"], v[f"{key}.bias"])
            if rh is not None:
                _add_matmul_(rz, rh, _t(self.params[f"{key}.weight"]))
            if i < len(self.keys) - 1:
                rh = rz.mul_(self.dact[i])
            rs.append(rz)
        return rs

    def backward(self, d_mean: Tensor, lr: float | None = None) -> tuple[Params, list[Tensor], dict[int, Tensor]]:
        """Gradients of the layers' parameters (per task) for the output cotangent
        ``d_mean`` (N, S, A) (with ``lr``: params - lr * gradient); the cotangents at each
        layer's output (index = layer), and at each hidden layer's input before the
        activation's derivative (key = layer >= 1)."""
        grads: Params = {}
        deltas: list[Tensor] = [d_mean]
        qs: dict[int, Tensor] = {}
        delta = d_mean
        for i in range(len(self.keys) - 1, -1, -1):
            key = self.keys[i]
            w, b = self.params[f"{key}.weight"], self.params[f"{key}.bias"]
            if lr is None:
                grads[f"{key}.weight"] = _t(delta) @ self.inputs[i]
                grads[f"{key}.bias"] = delta.sum(-2)
            else:
                if w.dim() == 2:  # shared params, per-task gradients
                    w = w.expand(delta.shape[0], *w.shape)
                grads[f"{key}.weight"] = torch.baddbmm(w, _t(delta), self.inputs[i], alpha=-lr)
                grads[f"{key}.bias"] = b - lr * delta.sum(-2)
            if i > 0:
                q = delta @ self.params[f"{key}.weight"]
                delta = q * self.dact[i - 1]
                deltas.insert(0, delta)
                qs[i] = q
        return grads, deltas, qs


class MlpMamlProducts:
    """Adapted parameters and the products MAML-TRPO needs, for one inner step.

    Args:
        policy: The policy (structure and min std only).
        theta: Meta-parameters (no N dim).
        pre: Pre-adaptation data of the N tasks (the inner step's batch).
        post: Post-adaptation data (where the Fisher matrices are taken).
        inner_lr: The inner step size.
        phi: Adapted parameters (N, ...) for the post-adaptation pass; by default those of
            the inner step on ``pre``.
    """

    def __init__(self, policy: GaussianMLPPolicy, theta: Params, pre: TaskData, post: TaskData,
                 inner_lr: float, phi: Params | None = None) -> None:
        self.policy, self.theta, self.lr = policy, theta, inner_lr
        self.n = pre.obs.shape[0]
        with torch.no_grad():
            self.pre = _Pass(policy, theta, pre.obs, per_task=False)
            adapted = self.pre.log_prob_gradient((pre.advantages * pre.weight).unsqueeze(-1), pre.actions, inner_lr)
            # ``phi``: take the Fisher products at these adapted parameters (those of the full
            # batch when ``pre`` and ``post`` are subsamples) instead of pre's own step.
            self.phi = {k: adapted[k] for k in theta} if phi is None else phi
            self.post = _Pass(policy, self.phi, post.obs, per_task=True)
            self.post_data = post

    @property
    def adapted_policy(self) -> tuple[Tensor, Tensor]:
        """Mean and std (N, S, A) of the adapted policies on the post-adaptation steps."""
        return self.post.mean, self.post.std.unsqueeze(-2).expand_as(self.post.mean)

    def surrogate_gradient(self) -> Params:
        """Per-task gradient w.r.t. phi_i of the TRPO surrogate -sum(ratio * adv * weight)
        at ratio 1 (old policy = :attr:`adapted_policy`)."""
        post = self.post_data
        with torch.no_grad():
            grads = self.post.log_prob_gradient((post.advantages * post.weight).unsqueeze(-1), post.actions)
        return {k: grads[k] for k in self.theta}

    def _adapt_product(self, v: Params, per_task: bool, sum_tasks: bool) -> Params:
        """v - lr * H_i v per task (N, ...), or summed over tasks, where H_i is the inner
        loss's Hessian at theta (R-operator on the kept pass) and ``v`` is shared or per
        task (N, ...). The products accumulate in place, the step size folded in."""
        p, keys, lr, n = self.pre, self.pre.keys, self.lr, self.n
        rs = p.r_forward(v)
        r_mean = rs[-1]
        r_log_std = v["log_std"] * p.std_mask  # (A,) or (N, A)
        r_ls = r_log_std.unsqueeze(-2) if per_task else r_log_std
        coef, diff, inv_var = p.coef, p.diff, p.inv_var
        # R{dL/dmean} and R{dL/dlog_std} of L = -sum(coef * log N(a; mean, std)).
        r_delta = coef * inv_var * (r_mean + 2 * diff * r_ls)
        r_gls = (2 * coef * inv_var * diff * (r_mean + diff * r_ls)).sum(-2) * p.std_mask

        def base(key: str) -> Tensor:
            x = v[key]
            if sum_tasks:
                return x.sum(0) if per_task else x * n
            return x.clone() if per_task else x.expand(n, *x.shape).clone()

        def minus_lr(key: str, term: Tensor) -> Tensor:  # base - lr * term (term per task)
            return base(key).sub_(term.sum(0) if sum_tasks else term, alpha=lr)

        out: Params = {"log_std": minus_lr("log_std", r_gls)}
        for i in range(len(keys) - 1, -1, -1):
            key, delta = keys[i], p.deltas[i]
            w_key = f"{key}.weight"
            pairs = [(r_delta, p.inputs[i])] + ([(delta, rs[i - 1])] if i > 0 else [])
            r_w = base(w_key)
            for a, b in pairs:  # r_w -= lr * a^T b (per task, or summed over all steps)
                if sum_tasks:
                    r_w.addmm_(_t(_flat_steps(a)), _flat_steps(b), alpha=-lr)
                else:
                    r_w.baddbmm_(_t(a), b, alpha=-lr)
            out[w_key] = r_w
            out[f"{key}.bias"] = minus_lr(f"{key}.bias", r_delta.sum(-2))
            if i > 0:
                r_q = _add_matmul_(r_delta @ p.params[w_key], delta, v[w_key])
                r_delta = r_q.mul_(p.dact[i - 1])
                if p.tanh:
                    r_delta.addcmul_(p.dact_terms[i], rs[i - 1])
        return {k: out[k] for k in self.theta}  # theta's order: callers flatten by it

    def jvp(self, v: Params) -> Params:
        """J_i v for every task (N, ...): how the adapted parameters move with theta."""
        return self._adapt_product(v, per_task=False, sum_tasks=False)

    def vjp(self, u: Params) -> Params:
        """sum_i J_i^T u_i for per-task cotangents ``u`` (N, ...) (J_i is symmetric)."""
        return self._adapt_product(u, per_task=True, sum_tasks=True)

    def fisher(self, u: Params) -> Params:
        """F_i u_i per task: the Gauss-Newton form of the Hessian of KL(old || new) at the
        adapted parameters, weighted by the post-adaptation steps' weights."""
        p = self.post
        r_mean = p.r_forward(u)[-1]
        w = self.post_data.weight.unsqueeze(-1).to(r_mean.dtype)
        grads, _, _ = p.backward(w * r_mean / p.std.unsqueeze(-2).square())
        # Through std = exp(log_std) (broadcast over steps): 2 w d_std / std^2 * std.
        grads["log_std"] = 2 * w.sum(-2) * u["log_std"] * p.std_mask
        return {k: grads[k] for k in self.theta}
