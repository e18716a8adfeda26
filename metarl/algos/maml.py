"""MAML-RL (Finn et al., 2017) and first-order policy-gradient meta-learners.

One learner, six outer rules (``algo.name``):

- ``maml_trpo``: second-order meta-gradient through the inner policy-gradient steps, TRPO
  outer step (conjugate gradient on the KL Hessian, backtracking line search with the KL
  and improvement checks), as in the MAML paper.
- ``maml_ppo``: clipped surrogate on the adapted policies, ``ppo_epochs`` Adam steps.
- ``maml_vpg``: plain policy gradient of the adapted policies, one Adam step.
- ``fomaml``: as ``maml_vpg`` with the inner gradient treated as a constant (first order).
- ``reptile``: theta += outer_lr * mean_i(phi_i - theta) after policy-gradient inner steps.
- ``promp``: ProMP (Rothfuss et al., 2018): the low-variance curvature (LVC) inner objective,
  ``ppo_epochs`` Adam steps on the clipped surrogate of the adapted policies plus a KL
  penalty between each inner step's sampling policy and the current one on that step's data.

ProMP's LVC inner objective is the likelihood ratio against the policy that sampled the data,
held constant: J_LVC(theta) = sum_t w_t pi_theta(a_t | s_t) / pi_old(a_t | s_t) A_t. At
theta = theta_old its gradient is the policy gradient sum_t w_t grad log pi A_t and its
Hessian sum_t w_t A_t (grad^2 log pi + grad log pi grad log pi^T), which the plain
log-likelihood objective's Hessian (the first term only) misses. pi_old is the sampling
policy: as the sampler recorded it when adapting at evaluation, recomputed by the learner
at the start of an update (at theta_old, through the earlier inner steps).

Parameters are a dict of tensors (``self.meta``: the policy's parameters, plus one inner
step size per parameter entry with ``learn_inner_lr``, i.e. Meta-SGD). Adaptation is a
pure function (:meth:`MamlLearner.adapt_task`) evaluated with ``functional_call``; the same
function is differentiated by autograd (meta-gradient) and by ``torch.func.jvp``/``vjp``
(the TRPO Hessian-vector product).

TRPO's KL Hessian at theta_old is J^T F J: J the Jacobian of the adaptation, F the
Fisher matrix of each adapted policy on its post-adaptation states (the KL's gradient
vanishes at theta_old, so no other term remains). Each conjugate-gradient iteration does
one JVP through the adaptation, one Fisher-vector product and one VJP through the
adaptation, on passes computed once per update; the per-task adaptation is not rebuilt
and double-differentiated for every product as garage does. For the MLP policy with one
inner step these products are written out in closed form (:mod:`metarl.algos.maml_mlp`);
otherwise ``torch.func`` computes them (a forward-over-reverse JVP, and a VJP through the
adaptation's graph kept from the start of the update).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from metarl.algos import maml_mlp
from metarl.algos.base import (
    AlgoConfig,
    LearnerSetup,
    NoExtraState,
    TrainContext,
    check_positive,
    clipped,
    ppo_clip_objective,
    register,
    summary_metrics,
)
from metarl.envs import Task
from metarl.errors import ConfigError
from metarl.optim import (
    compute_gae,
    conjugate_gradient,
    discounted_returns,
    linear_baseline_values,
    normalize,
)
from metarl.policies import GaussianMLPPolicy, Params, PolicySpec, gaussian_kl, gaussian_log_prob
from metarl.policies.acting import Acting
from metarl.sampling import EpisodeBatch

LR_PREFIX = "lr."


@dataclass(frozen=True)
class MamlConfig(AlgoConfig):
    """MAML-RL (Finn et al., 2017) and its first-order relatives.

    ``name``: ``maml_trpo`` (TRPO outer step), ``maml_ppo`` (clipped outer objective),
    ``maml_vpg`` (plain outer gradient with Adam), ``fomaml`` (first-order MAML, Adam outer
    step), ``reptile`` (Reptile with policy-gradient inner steps) or ``promp`` (ProMP: LVC
    inner objective, clipped outer objective with an inner KL penalty).
    """

    name: str = "maml_trpo"
    inner_lr: float = 0.1
    """Step size of each per-task adaptation step."""
    num_inner_steps: int = 1
    """Policy-gradient steps taken on each task before the outer update."""
    learn_inner_lr: bool = False
    """Meta-SGD: learn one inner step size per parameter entry (initialised to inner_lr)."""
    gamma: float = 0.99
    gae_lambda: float = 1.0
    """GAE lambda; 1.0 gives Monte-Carlo returns minus the baseline."""
    normalize_advantages: bool = True
    """Centre and scale advantages per task (MAML's reference code does)."""
    max_kl: float = 0.01
    """TRPO trust region: mean KL between the old and new adapted policies."""
    cg_iters: int = 10
    cg_damping: float = 1e-5
    hvp_subsample: float = 1.0
    """Fraction of each task's steps that the conjugate gradient's curvature products use:
    1 / k keeps every k-th step (rllab's ``subsample_factor`` draws a random subset of that
    size instead); 1.0 is exact, and fractions not of the form 1 / k are refused. Where the
    episode length is a multiple of k, the kept steps are the same times of every episode
    in every update (t = 0, k, 2k, ...: a sample stratified over the episode, not a random
    one). The products' adaptation (the inner step and its Jacobian) also runs on the kept
    pre-adaptation steps. The gradient and the line search's KL and surrogate checks always
    use every step, so an accepted step keeps the exact trust region. 0.1 makes
    MAML-TRPO's update on ML1 several times faster (docs/numbers.md)."""
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8
    outer_lr: float = 1e-3
    """Adam step size of maml_ppo, maml_vpg and fomaml; Reptile's interpolation rate."""
    ppo_clip: float = 0.2
    ppo_epochs: int = 5
    kl_penalty: float = 5e-4
    """ProMP: initial weight of each inner step's KL(sampling policy || current policy)."""
    adaptive_kl_penalty: bool = False
    """ProMP: after each update, halve a step's KL weight when its KL is below
    target_inner_kl / 1.5 and double it when above 1.5 x target_inner_kl."""
    target_inner_kl: float = 0.01
    """ProMP: the KL each inner step's penalty steers towards (adaptive_kl_penalty only)."""

    def __post_init__(self) -> None:
        if self.num_inner_steps < 1:
            raise ConfigError(f"algo.num_inner_steps must be >= 1, got {self.num_inner_steps}")
        for key in ("inner_lr", "max_kl", "outer_lr", "ppo_clip", "gamma", "target_inner_kl"):
            check_positive(f"algo.{key}", getattr(self, key))
        if self.kl_penalty < 0:
            raise ConfigError(f"algo.kl_penalty must be >= 0, got {self.kl_penalty}")
        if not 0 < self.hvp_subsample <= 1 or abs(round(1 / self.hvp_subsample) * self.hvp_subsample - 1) > 1e-3:
            raise ConfigError("algo.hvp_subsample must be 1 / k for a whole k (1.0, 0.5, 0.333, 0.25, ..., 0.1: "
                              f"every k-th step), got {self.hvp_subsample}")
        if not 0 <= self.gae_lambda <= 1:
            raise ConfigError(f"algo.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.cg_iters < 1 or self.ls_max_steps < 1 or self.ppo_epochs < 1:
            raise ConfigError("algo.cg_iters, algo.ls_max_steps and algo.ppo_epochs must be >= 1")



class MamlState(NamedTuple):
    """Adaptation state: the tasks' batches so far (one per inner step) and the parameters
    they gave (the meta-parameters, shared, before any step)."""

    tasks: list[Task]
    batches: tuple[EpisodeBatch, ...]
    params: Params | list[Params]



class TaskData(NamedTuple):
    """Steps flattened over episodes and time (S = E * T), on the learner device: (N, S, ...)
    for all tasks of a batch, (S, ...) inside per-task functions (vmap strips N).

    ``weight`` is mask / (number of valid steps): padding weighs 0 and each task's losses
    are means over its real steps. ``sampling_log_prob``: each action's log-likelihood
    under the policy that sampled it (as the sampler recorded it; ProMP's update recomputes
    it at the meta-parameters it starts from), the denominator of ProMP's LVC objective.
    """

    obs: Tensor  # (N, S, O)
    actions: Tensor  # (N, S, A)
    advantages: Tensor  # (N, S)
    weight: Tensor  # (N, S)
    sampling_log_prob: Tensor  # (N, S)


def advantages(batch: EpisodeBatch, gamma: float, lam: float, normalize_adv: bool) -> Tensor:
    """GAE on the linear feature baseline, fitted per task on the batch itself. (N, E, T).

    The baseline has time features and is fitted on finite-horizon returns, so the value
    after an episode's last step is 0 (truncated or terminated alike).
    """
    mask = batch.mask
    returns = discounted_returns(batch.rewards, mask, gamma)
    values = linear_baseline_values(batch.obs, returns, mask)
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    dones = batch.terminated | batch.truncated | ~mask
    adv = compute_gae(batch.rewards, values, next_values, batch.terminated, dones, gamma, lam) * mask
    return normalize(adv, mask) if normalize_adv else adv


def prepare(batch: EpisodeBatch, cfg: MamlConfig, device: torch.device) -> TaskData:
    """Stacked TaskData of a batch (advantages computed here, once)."""
    batch = batch.to(device)
    adv = advantages(batch, cfg.gamma, cfg.gae_lambda, cfg.normalize_advantages)
    n, e, t = batch.mask.shape
    mask = batch.mask.reshape(n, e * t).float()
    weight = mask / mask.sum(-1, keepdim=True).clamp_min(1)
    return TaskData(batch.obs.reshape(n, e * t, -1), batch.actions.reshape(n, e * t, -1),
                    adv.reshape(n, e * t), weight, batch.log_probs.reshape(n, e * t))


def subsample(data: TaskData, fraction: float) -> TaskData:
    """Every k-th step of each task (k = round(1 / fraction)), weights renormalised so that
    each task's losses stay means over the real steps kept. ``fraction`` 1 returns ``data``."""
    stride = max(1, round(1 / fraction))
    if stride == 1:
        return data
    keep = slice(0, None, stride)
    weight = data.weight[:, keep]
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return TaskData(data.obs[:, keep], data.actions[:, keep], data.advantages[:, keep], weight,
                    data.sampling_log_prob[:, keep])


CHUNK_STEPS = 8_192
"""Most steps (tasks x steps per task) per group of tasks in the closed-form TRPO update on
a CPU. The inner step (:meth:`MamlLearner.adapted_params`), the meta-gradient, the old
policies, the line search's candidates and the conjugate gradient's products are sums or
concatenations over tasks, so they run a group at a time:
each product's temporaries (steps x hidden units) stay a few MB, near the caches, and the
subsampled update keeps only the subsample's passes, 0.55 GB at ML1 pick-place's shape
against 5 GB for the whole batch at once (docs/numbers.md). The exact update still keeps
every group's passes for its conjugate gradient. On a GPU the whole batch is one group: its
memory allows it and its kernels want the rows."""


def task_chunks(data: TaskData, max_steps: int | None = None) -> list[slice]:
    """Contiguous groups of the N tasks, as even as possible, each of at most ``max_steps``
    steps (default :data:`CHUNK_STEPS` on a CPU, all tasks on a GPU; one task at least)."""
    n, s = data.obs.shape[:2]
    if max_steps is None:
        max_steps = CHUNK_STEPS if data.obs.device.type == "cpu" else n * s
    count = math.ceil(n / max(1, max_steps // max(s, 1)))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def take(data: TaskData, tasks: slice) -> TaskData:
    """The tasks ``tasks`` of ``data`` (views)."""
    return TaskData(*(x[tasks] for x in data))


def adapt_kl_penalty(penalty: Tensor, kl: Tensor, target: float) -> Tensor:
    """ProMP's adaptive penalty, per inner step: halve a weight whose KL is below
    target / 1.5, double one above 1.5 x target, keep the rest. (K,) -> (K,)."""
    return torch.where(kl < target / 1.5, penalty / 2, torch.where(kl > target * 1.5, penalty * 2, penalty))


def _summary(batch: EpisodeBatch, tag: str) -> dict[str, float]:
    return summary_metrics(batch.episode_returns(), batch.episode_success(), tag)


def _flat(tensors: dict[str, Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflat(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = vector[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out


class MamlLearner(NoExtraState):
    """MAML-family meta-learner on a Gaussian policy.

    Args:
        cfg: Hyper-parameters (``cfg.name`` picks the outer rule).
        policy: The policy module; only its structure is used, parameters live in ``meta``.
        device: Where the learner computes (``cpu`` or ``cuda``).
    """

    adaptation_unit = "gradient_steps"
    eval_deterministic = False  # rllab's MAML and ProMP sample their test-time episodes
    resumes_exactly = adapts_on_batch = True
    trains = True
    closed_form = True
    """MAML-TRPO's products in closed form where :func:`maml_mlp.supports` says they apply
    (the ``torch.func`` path otherwise; tests switch this off to compare the two)."""

    def __init__(self, cfg: MamlConfig, policy: nn.Module, device: str | torch.device = "cpu",
                 adaptation_episodes: int = 20) -> None:
        self.cfg = cfg
        self.adaptation_episodes = adaptation_episodes
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.policy.requires_grad_(False)
        self.meta: dict[str, Tensor] = {k: v.detach().clone().requires_grad_()
                                        for k, v in self.policy.named_parameters()}
        if cfg.learn_inner_lr:
            if cfg.name == "reptile":
                raise ConfigError("algo.learn_inner_lr is not defined for reptile (it has no "
                                 "meta-gradient); use fomaml or maml_* instead")
            for k, v in list(self.meta.items()):
                self.meta[LR_PREFIX + k] = torch.full_like(v, cfg.inner_lr).requires_grad_()
        self.optimizer = (torch.optim.Adam(self.meta.values(), lr=cfg.outer_lr)
                          if cfg.name in ("maml_ppo", "maml_vpg", "fomaml", "promp") else None)
        self.kl_penalty = torch.full((cfg.num_inner_steps,), cfg.kl_penalty, dtype=torch.float64)
        """ProMP: the KL penalty's weight of each inner step (adapted with adaptive_kl_penalty)."""

    @classmethod
    def from_setup(cls, setup: LearnerSetup) -> MamlLearner:
        """A learner on a Gaussian MLP policy built from the run's ``policy`` settings."""
        p = setup.policy
        policy = GaussianMLPPolicy(*setup.dims, p.hidden_sizes, p.activation, p.init_std, p.std_type, p.min_std)
        return cls(setup.algo, policy, setup.device, setup.episodes_per_task)

    @property
    def policy_spec(self) -> PolicySpec:
        return self.policy.spec

    # ----------------------------------------------------------------- adaptation

    def init_adaptation(self, tasks: list[Task], seed: int = 0) -> MamlState:
        return MamlState(list(tasks), (), self.policy_params)

    def acting(self, state: MamlState) -> Acting:
        return Acting(state.params)

    def adapt(self, state: MamlState, batch: EpisodeBatch) -> MamlState:
        """One more inner step: the adaptation recomputed from the meta-parameters through
        every batch so far (step k uses the k-th batch)."""
        batches = (*state.batches, batch)
        return MamlState(state.tasks, batches, self.adapted_params(list(batches)))

    @property
    def policy_params(self) -> Params:
        """The meta-policy's parameters (detached), what pre-adaptation episodes use."""
        return {k: v.detach() for k, v in self.meta.items() if not k.startswith(LR_PREFIX)}

    def inner_loss(self, params: Params, data: TaskData) -> Tensor:
        """One task's inner objective, negated: the policy-gradient surrogate
        -sum_t w_t log pi(a_t | s_t) A_t, or for ``promp`` the LVC objective
        -sum_t w_t pi(a_t | s_t) / pi_old(a_t | s_t) A_t (module docstring)."""
        mean, std = functional_call(self.policy, params, (data.obs,))
        log_prob = gaussian_log_prob(mean, std, data.actions)
        if self.cfg.name == "promp":
            return -(torch.exp(log_prob - data.sampling_log_prob) * data.advantages * data.weight).sum()
        return -(log_prob * data.advantages * data.weight).sum()

    def adapt_path(self, meta: dict[str, Tensor], steps: list[TaskData], first_order: bool = False) -> list[Params]:
        """Inner steps on one task, a pure function of ``meta``: the parameters before each
        step and after the last (``len(steps) + 1`` entries).

        Step k uses ``steps[k]`` (episodes collected after k steps). Differentiable w.r.t.
        ``meta`` (second order) unless ``first_order``.
        """
        params = {k: v for k, v in meta.items() if not k.startswith(LR_PREFIX)}
        path = [params]
        for data in steps:
            g = grad(self.inner_loss)(params, data)
            params = {k: p - meta.get(LR_PREFIX + k, self.cfg.inner_lr)
                      * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
            path.append(params)
        return path

    def adapt_task(self, meta: dict[str, Tensor], steps: list[TaskData], first_order: bool = False) -> Params:
        """The parameters after all of :meth:`adapt_path`'s steps."""
        return self.adapt_path(meta, steps, first_order)[-1]

    def adapt_all(self, meta: dict[str, Tensor], steps: list[TaskData], first_order: bool = False) -> Params:
        """:meth:`adapt_task` for every task at once (vmap over the task dim): (N, ...) params."""
        return vmap(partial(self.adapt_task, first_order=first_order), in_dims=(None, 0))(meta, steps)

    def adapt_path_all(self, meta: dict[str, Tensor], steps: list[TaskData]) -> list[Params]:
        """:meth:`adapt_path` for every task at once: ``len(steps) + 1`` sets of (N, ...) params."""
        return vmap(self.adapt_path, in_dims=(None, 0))(meta, steps)

    def forward_all(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Per-task params (N, ...) on per-task observations (N, S, O) -> mean, std (N, S, A)."""
        return vmap(lambda p, o: functional_call(self.policy, p, (o,)))(params, obs)

    def adapted_params(self, batches: list[EpisodeBatch]) -> list[Params]:
        """Adapted parameters per task after ``len(batches)`` inner steps (detached)."""
        steps = [prepare(b, self.cfg, self.device) for b in batches]
        theta = {k: v.detach() for k, v in self.meta.items()}
        adapted: list[Params] = []
        for c in task_chunks(steps[0]):  # a group at a time: the inner step's temporaries stay small
            with torch.enable_grad():
                phi = self.adapt_all(theta, [take(s, c) for s in steps])
            adapted += [{k: v[i].detach() for k, v in phi.items()} for i in range(c.stop - c.start)]
        return adapted

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """One meta-iteration on ``meta_batch_size`` training tasks: collect, adapt
        (``num_inner_steps`` times), collect, update."""
        tasks = ctx.train_tasks()
        state = self.init_adaptation(tasks)
        for step in range(self.cfg.num_inner_steps):
            state = self.adapt(state, ctx.collect(tasks, self.acting(state), phase=step))
        post = ctx.collect(tasks, self.acting(state), phase=len(state.batches))
        metrics = _summary(state.batches[0], "pre") | _summary(post, "post")
        return metrics | self.update(list(state.batches), post)

    # ----------------------------------------------------------------- outer update

    def update(self, pre: list[EpisodeBatch], post: EpisodeBatch) -> dict[str, float]:
        """One meta-update from pre-adaptation batches (one per inner step) and the
        post-adaptation batch. Returns named statistics (``loss/...``)."""
        if len(pre) != self.cfg.num_inner_steps:
            raise ValueError(f"expected {self.cfg.num_inner_steps} pre-adaptation batches, got {len(pre)}")
        steps = [prepare(b, self.cfg, self.device) for b in pre]
        post_data = prepare(post, self.cfg, self.device)
        rule = {"maml_trpo": self._trpo, "maml_ppo": self._ppo, "maml_vpg": self._gradient_step,
                "fomaml": self._gradient_step, "reptile": self._reptile, "promp": self._ppo}[self.cfg.name]
        return rule(steps, post_data)

    def _theta(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.meta.items()}

    @staticmethod
    def _ratio(mean: Tensor, std: Tensor, data: TaskData, old: tuple[Tensor, Tensor]) -> Tensor:
        return torch.exp(gaussian_log_prob(mean, std, data.actions) - gaussian_log_prob(*old, data.actions))

    @classmethod
    def _surrogate_loss(cls, mean: Tensor, std: Tensor, data: TaskData, old: tuple[Tensor, Tensor]) -> Tensor:
        """TRPO surrogate loss (negated importance-weighted advantage) summed over the steps
        (last dim): a scalar for one task, (N,) for a batch of tasks."""
        return -(cls._ratio(mean, std, data, old) * data.advantages * data.weight).sum(-1)

    def _surrogate(self, phi: Params, data: TaskData, old: tuple[Tensor, Tensor]) -> Tensor:
        """One task's TRPO surrogate loss under ``phi``."""
        mean, std = functional_call(self.policy, phi, (data.obs,))
        return self._surrogate_loss(mean, std, data, old)

    def _fisher_product(self, phi: Params, post: TaskData) -> Callable[[Params], Params]:
        """u -> F_i u per task: the Hessian of each task's KL(old || new) at ``phi`` = old.

        There the KL's gradient w.r.t. the policy's outputs is zero, so its Hessian is the
        Gauss-Newton product J_out^T H_out J_out with H_out = diag(1/std^2, 2/std^2) over
        (mean, std) per sample (times its weight). One JVP and one VJP of the network
        (its graph kept across conjugate-gradient iterations) instead of a
        forward-over-reverse pass through the KL.
        """
        outputs = partial(self.forward_all, obs=post.obs)
        (_, std), out_vjp = vjp(outputs, phi)
        w = post.weight.unsqueeze(-1) / (std.detach() ** 2)

        def fisher(u: Params) -> Params:
            d_mean, d_std = jvp(outputs, (phi,), (u,))[1]
            return out_vjp((w * d_mean, 2 * w * d_std))[0]

        return fisher

    def evaluate_objectives(self, theta: dict[str, Tensor], steps: list[TaskData], post: TaskData,
                            old: tuple[Tensor, Tensor]) -> tuple[float, float]:
        """(surrogate loss, KL from the old adapted policies) at ``theta``, means over tasks."""
        if self._closed_form_applies():
            with torch.no_grad():  # a group of tasks at a time: only their outputs are kept
                parts = [maml_mlp.MlpMamlProducts(self.policy, theta, take(steps[0], c), take(post, c),
                                                  self.cfg.inner_lr).adapted_policy for c in task_chunks(post)]
                mean, std = (torch.cat(x) for x in zip(*parts, strict=True))
        else:
            with torch.enable_grad():
                phi = {k: v.detach() for k, v in self.adapt_all(theta, steps).items()}
            with torch.no_grad():
                mean, std = self.forward_all(phi, post.obs)
        return self._objectives(mean, std, post, old)

    def _objectives(self, mean: Tensor, std: Tensor, post: TaskData, old: tuple[Tensor, Tensor]) -> tuple[float, float]:
        with torch.no_grad():
            loss = self._surrogate_loss(mean, std, post, old).mean()
            kl = (gaussian_kl(old[0], old[1], mean, std) * post.weight).sum(-1).mean()
        return loss.item(), kl.item()

    def _closed_form_applies(self) -> bool:
        """The closed-form products apply: one plain policy-gradient inner step (not ProMP's
        LVC objective, whose step differs away from the sampling policy) on an MLP."""
        cfg = self.cfg
        return (self.closed_form and cfg.name != "promp"
                and maml_mlp.supports(self.policy, cfg.num_inner_steps, cfg.learn_inner_lr))

    def _trpo(self, steps: list[TaskData], post: TaskData) -> dict[str, float]:
        closed_form = self._closed_form_applies()
        with torch.set_grad_enabled(not closed_form):  # the closed form needs no autograd
            return self._trpo_step(steps, post, closed_form)

    def _trpo_step(self, steps: list[TaskData], post: TaskData, closed_form: bool) -> dict[str, float]:
        cfg = self.cfg
        theta = self._theta()
        full_step, old, g, loss_before = self._trpo_direction(theta, steps, post, closed_form)
        base = _flat(theta)
        accepted, loss_after, kl_after, steps_taken = False, loss_before, 0.0, 0
        for j in range(cfg.ls_max_steps):
            candidate = _unflat(base + cfg.ls_backtrack_ratio ** j * full_step, theta)
            loss, kl = self.evaluate_objectives(candidate, steps, post, old)
            steps_taken = j + 1
            if kl <= cfg.max_kl and loss < loss_before:
                accepted, loss_after, kl_after = True, loss, kl
                with torch.no_grad():
                    for k, v in candidate.items():
                        self.meta[k].copy_(v)
                break
        return {"loss/surrogate_before": loss_before, "loss/surrogate_after": loss_after,
                "loss/kl": kl_after, "loss/grad_norm": g.norm().item(),
                "loss/line_search_steps": float(steps_taken), "loss/step_accepted": float(accepted)}

    def _trpo_direction(self, theta: dict[str, Tensor], steps: list[TaskData], post: TaskData, closed_form: bool
                        ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor, float]:
        """TRPO's full step at ``theta`` (the conjugate gradient's direction scaled to the
        trust region), the adapted policies' mean and std on ``post`` (the line search's old
        policies), the meta-gradient and the surrogate loss at ``theta``. Its passes and
        products are freed when it returns, before the line search builds its own.
        """
        cfg = self.cfg
        # The curvature products of the conjugate gradient may run on a subsample of the steps.
        exact = cfg.hvp_subsample == 1
        cg_steps = [subsample(s, cfg.hvp_subsample) for s in steps]
        cg_post = subsample(post, cfg.hvp_subsample)
        n = post.obs.shape[0]
        if closed_form:
            # A group of tasks at a time (task_chunks): the gradient and the old policies need
            # each task's passes once; the conjugate gradient's products are sums over the
            # groups of the exact batch's kept passes, or of the subsample's.
            parts, kept = [], []
            for c in task_chunks(post):
                products = maml_mlp.MlpMamlProducts(self.policy, theta, take(steps[0], c), take(post, c), cfg.inner_lr)
                # Old mean and std, phi, and J^T (d surrogate_i / d phi_i) summed over the group.
                parts.append((*products.adapted_policy, products.phi,
                              _flat(products.vjp(products.surrogate_gradient()))))
                if exact:
                    kept.append(products)
                del products
            means, stds, phis, gs = zip(*parts, strict=True)
            old = (torch.cat(means), torch.cat(stds))
            g = torch.stack(gs).sum(0)
            if not exact:
                phi = {k: torch.cat([p[k] for p in phis]) for k in theta}
                kept = [maml_mlp.MlpMamlProducts(self.policy, theta, take(cg_steps[0], c), take(cg_post, c),
                                                 cfg.inner_lr, phi={k: v[c] for k, v in phi.items()})
                        for c in task_chunks(cg_post)]
            del parts, means, stds, phis, gs

            def curvature(v: Params) -> Tensor:  # sum_i J_i^T F_i J_i v
                return torch.stack([_flat(p.vjp(p.fisher(p.jvp(v)))) for p in kept]).sum(0)
        else:
            adapt = partial(self.adapt_all, steps=steps)
            phi, vjp_fn = vjp(adapt, theta)  # keeps the adaptation's graph for every J^T u below
            phi = {k: v.detach() for k, v in phi.items()}
            with torch.no_grad():
                old = self.forward_all(phi, post.obs)
            surrogate_grad = vmap(grad(self._surrogate))(phi, post, old)
            g = _flat(vjp_fn(surrogate_grad)[0])  # J^T (d surrogate_i / d phi_i)
            adapt_cg = adapt if exact else partial(self.adapt_all, steps=cg_steps)
            cg_vjp_fn = vjp_fn if exact else vjp(adapt_cg, theta)[1]
            fisher = self._fisher_product(phi, cg_post)

            def curvature(v: Params) -> Tensor:  # sum_i J_i^T F_i J_i v
                return _flat(cg_vjp_fn(fisher(jvp(adapt_cg, (theta,), (v,))[1]))[0])

        g = g / n  # the meta-gradient of the mean surrogate
        loss_before, _ = self._objectives(*old, post, old)

        def hessian_vector_product(v_flat: Tensor) -> Tensor:
            """(J^T F J / N + damping) v: the Hessian of the mean KL at theta_old."""
            return curvature(_unflat(v_flat, theta)) / n + cfg.cg_damping * v_flat

        step_dir, h_step_dir = conjugate_gradient(hessian_vector_product, -g, cfg.cg_iters, return_product=True)
        shs = 0.5 * (step_dir @ h_step_dir)
        full_step = step_dir * torch.sqrt(cfg.max_kl / shs.clamp_min(1e-12))  # 0.5 s'Hs = max_kl
        return full_step, old, g, loss_before

    def _ppo(self, steps: list[TaskData], post: TaskData) -> dict[str, float]:
        """``maml_ppo`` and ``promp``: ``ppo_epochs`` Adam steps on :meth:`ppo_loss`, all on
        the same batches, its old policies fixed at the meta-parameters the update starts
        from. ``promp`` then adapts its KL penalty (``adaptive_kl_penalty``)."""
        cfg = self.cfg
        steps, old, samplers = self.sampling_policies(steps, post)
        stats: dict[str, float] = {}
        for _ in range(cfg.ppo_epochs):
            loss, ratio, inner_kl = self.ppo_loss(self.meta, steps, post, old, samplers)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                clip_frac = (clipped(ratio, cfg.ppo_clip) * post.weight).sum(-1).mean()
            stats = {"loss/ppo": loss.item(), "loss/clip_fraction": clip_frac.item()}
        _, kl = self.evaluate_objectives(self._theta(), steps, post, old)
        stats["loss/kl"] = kl
        if cfg.name == "promp":
            with torch.enable_grad():
                path = [{k: v.detach() for k, v in p.items()} for p in self.adapt_path_all(self._theta(), steps)]
            with torch.no_grad():
                inner_kl = self.inner_kls(path, steps, samplers)
            for k, value in enumerate(inner_kl.tolist()):
                stats[f"loss/inner_kl_{k}"] = value
                stats[f"loss/kl_penalty_{k}"] = self.kl_penalty[k].item()
            if cfg.adaptive_kl_penalty:
                self.kl_penalty = adapt_kl_penalty(self.kl_penalty, inner_kl.to(self.kl_penalty), cfg.target_inner_kl)
        return stats

    def sampling_policies(self, steps: list[TaskData], post: TaskData
                          ) -> tuple[list[TaskData], tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]]:
        """The policies that sampled the batches, recomputed at the current meta-parameters:
        ``steps`` (with ``sampling_log_prob`` recomputed for ``promp``), the adapted policies' mean and
        std on ``post`` (N, S, A), and (``promp`` only, else empty) each inner step's policy
        on its own data."""
        promp = self.cfg.name == "promp"
        with torch.enable_grad():
            path = [{k: v.detach() for k, v in p.items()} for p in self.adapt_path_all(self._theta(), steps)]
        with torch.no_grad():
            old = self.forward_all(path[-1], post.obs)
            samplers = [self.forward_all(p, s.obs) for p, s in zip(path, steps, strict=False)] if promp else []
        if promp:
            steps = [s._replace(sampling_log_prob=gaussian_log_prob(*o, s.actions)) for s, o in zip(steps, samplers, strict=True)]
        return steps, old, samplers

    def ppo_loss(self, meta: dict[str, Tensor], steps: list[TaskData], post: TaskData, old: tuple[Tensor, Tensor],
                 samplers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The clipped outer loss of the policies adapted from ``meta``: minus the mean over
        tasks of each task's weighted mean of min(r A, clip(r, 1 - eps, 1 + eps) A), r the
        ratio against ``old`` on ``post``; ``promp`` adds mean_k kl_penalty_k * KL_k, KL_k the
        mean KL(sampling policy || current policy) of inner step k on its own data (as
        ProMP's reference code, ``meta_algos/pro_mp.py``). Returns the loss, the ratios
        (N, S) and the inner KLs (K,) (None but for ``promp``)."""
        path = self.adapt_path_all(meta, steps)
        mean, std = self.forward_all(path[-1], post.obs)
        ratio = self._ratio(mean, std, post, old)
        loss = -(ppo_clip_objective(ratio, post.advantages, self.cfg.ppo_clip) * post.weight).sum(-1).mean()
        inner_kl = None
        if self.cfg.name == "promp":
            inner_kl = self.inner_kls(path, steps, samplers)
            loss = loss + (self.kl_penalty.to(inner_kl) * inner_kl).mean()
        return loss, ratio, inner_kl

    def inner_kls(self, path: list[Params], steps: list[TaskData], samplers: list[tuple[Tensor, Tensor]]) -> Tensor:
        """(K,): for each inner step k, KL(pi_sampling_k || pi_path[k]) on step k's data, a
        weighted mean over each task's steps, then a mean over tasks."""
        kls = []
        for params, data, (old_mean, old_std) in zip(path, steps, samplers, strict=False):
            mean, std = self.forward_all(params, data.obs)
            kls.append((gaussian_kl(old_mean, old_std, mean, std) * data.weight).sum(-1).mean())
        return torch.stack(kls)

    def _gradient_step(self, steps: list[TaskData], post: TaskData) -> dict[str, float]:
        phi = self.adapt_all(self.meta, steps, first_order=self.cfg.name == "fomaml")
        mean, std = self.forward_all(phi, post.obs)
        loss = -(gaussian_log_prob(mean, std, post.actions) * post.advantages * post.weight).sum(-1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss/policy_gradient": loss.item()}

    def _reptile(self, steps: list[TaskData], post: TaskData) -> dict[str, float]:
        theta = self._theta()
        with torch.enable_grad():
            phi = self.adapt_all(theta, steps, first_order=True)
        with torch.no_grad():
            delta = {k: phi[k].detach().mean(0) - theta[k] for k in theta}
            for k, d in delta.items():
                self.meta[k].add_(self.cfg.outer_lr * d)
        return {"loss/reptile_step_norm": math.sqrt(sum(float((d * d).sum()) for d in delta.values()))}

    # ----------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict:
        state = {"meta": {k: v.detach().cpu() for k, v in self.meta.items()},
                 "optimizer": self.optimizer.state_dict() if self.optimizer else None}
        if self.cfg.name == "promp":
            state["kl_penalty"] = self.kl_penalty.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if set(state["meta"]) != set(self.meta):
            raise ValueError("checkpoint parameters do not match this learner's "
                             f"({sorted(state['meta'])} vs {sorted(self.meta)})")
        with torch.no_grad():
            for k, v in state["meta"].items():
                self.meta[k].copy_(v.to(self.device))
        if self.optimizer and state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if "kl_penalty" in state:
            self.kl_penalty = state["kl_penalty"].clone()


register(("maml_trpo", "maml_ppo", "maml_vpg", "fomaml", "reptile", "promp"), MamlConfig, MamlLearner.from_setup)
