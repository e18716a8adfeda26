"""Time one MAML-TRPO meta-update: metarl's learner against a garage-style reference.

The reference is written the way garage's MAML does it: a per-task loop, and a
Hessian-vector product that re-runs every task's adaptation and double-differentiates
through it on each conjugate-gradient iteration; the line search re-adapts every task for
the loss and again for the KL. Both start from the same parameters and batch and must
reach the same step (the script checks it), so the ratio is a like-for-like speed-up.

    python scripts/bench_meta_update.py                  # 20 tasks, 2x512 tanh, CPU
    python scripts/bench_meta_update.py --device cuda --json
    python scripts/bench_meta_update.py --torch-func     # metarl without its closed-form products
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.func import functional_call

from metarl.algos import MamlConfig
from metarl.algos.maml import MamlLearner, _flat, _unflat, prepare
from metarl.envs import Task
from metarl.optim import conjugate_gradient
from metarl.policies import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from metarl.sampling import EpisodeBatch


def synthetic_batch(n: int, e: int, t: int, obs_dim: int, act_dim: int, g: torch.Generator) -> EpisodeBatch:
    mask = torch.ones(n, e, t, dtype=torch.bool)
    truncated = torch.zeros(n, e, t, dtype=torch.bool)
    truncated[..., -1] = True
    return EpisodeBatch(obs=torch.randn(n, e, t, obs_dim, generator=g),
                        actions=torch.randn(n, e, t, act_dim, generator=g),
                        rewards=torch.randn(n, e, t, generator=g), log_probs=torch.zeros(n, e, t),
                        terminated=torch.zeros_like(truncated), truncated=truncated, mask=mask,
                        last_obs=torch.randn(n, e, obs_dim, generator=g), success=None,
                        tasks=[Task("synthetic", {"i": i}) for i in range(n)])


def garage_style_step(policy, theta: dict, pre, post, cfg: MamlConfig) -> dict:
    """The reference TRPO meta-update (per-task loop, re-adapting double-backward HVP)."""
    n = post.obs.shape[0]
    names = list(theta)

    def adapt(params, i, create_graph):
        d = pre
        mean, std = functional_call(policy, params, (d.obs[i],))
        loss = -(gaussian_log_prob(mean, std, d.actions[i]) * d.advantages[i] * d.weight[i]).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        return {k: p - cfg.inner_lr * gk for (k, p), gk in zip(params.items(), grads, strict=True)}

    def leaf(params):
        return {k: v.detach().clone().requires_grad_() for k, v in params.items()}

    old = []
    for i in range(n):
        phi = {k: v.detach() for k, v in adapt(leaf(theta), i, False).items()}
        with torch.no_grad():
            old.append(functional_call(policy, phi, (post.obs[i],)))

    def surrogate(params, i, create_graph):
        phi = adapt(params, i, create_graph)
        mean, std = functional_call(policy, phi, (post.obs[i],))
        ratio = torch.exp(gaussian_log_prob(mean, std, post.actions[i]) - gaussian_log_prob(*old[i], post.actions[i]))
        return -(ratio * post.advantages[i] * post.weight[i]).sum()

    def kl(params, i, create_graph):
        phi = adapt(params, i, create_graph)
        mean, std = functional_call(policy, phi, (post.obs[i],))
        return (gaussian_kl(old[i][0], old[i][1], mean, std) * post.weight[i]).sum()

    params = leaf(theta)
    loss = sum(surrogate(params, i, True) for i in range(n)) / n
    g = _flat(dict(zip(names, torch.autograd.grad(loss, list(params.values())), strict=True)))
    loss_before = loss.item()

    def hvp(v):
        params = leaf(theta)
        total = sum(kl(params, i, True) for i in range(n)) / n
        grads = torch.autograd.grad(total, list(params.values()), create_graph=True)
        gv = sum((gk * vk).sum() for gk, vk in zip(grads, _unflat(v, theta).values(), strict=True))
        hv = torch.autograd.grad(gv, list(params.values()))
        return _flat(dict(zip(names, hv, strict=True))) + cfg.cg_damping * v

    step_dir = conjugate_gradient(hvp, -g, cfg.cg_iters)
    shs = 0.5 * (step_dir @ hvp(step_dir))
    full_step = step_dir * torch.sqrt(cfg.max_kl / shs.clamp_min(1e-12))
    base = _flat(theta)
    for j in range(cfg.ls_max_steps):
        cand = _unflat(base + cfg.ls_backtrack_ratio ** j * full_step, theta)
        new_loss = sum(surrogate(leaf(cand), i, False).item() for i in range(n)) / n
        new_kl = sum(kl(leaf(cand), i, False).item() for i in range(n)) / n
        if new_kl <= cfg.max_kl and new_loss < loss_before:
            return cand
    return theta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    ap.add_argument("--obs-dim", type=int, default=39)
    ap.add_argument("--act-dim", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-func", action="store_true",
                    help="metarl's generic torch.func products instead of the closed form for the MLP")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    MamlLearner.closed_form = not args.torch_func

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = MamlConfig(name="maml_trpo", inner_lr=0.1, cg_iters=10, max_kl=0.01)
    policy = GaussianMLPPolicy(args.obs_dim, args.act_dim, args.hidden, activation="tanh")
    pre = synthetic_batch(args.tasks, args.episodes, args.horizon, args.obs_dim, args.act_dim, g)
    post = synthetic_batch(args.tasks, args.episodes, args.horizon, args.obs_dim, args.act_dim, g)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run_metarl():
        learner = MamlLearner(cfg, GaussianMLPPolicy(args.obs_dim, args.act_dim, args.hidden), device)
        learner.load_state_dict({"meta": policy.params(), "optimizer": None})
        sync()
        t0 = time.perf_counter()
        learner.update([pre], post)
        sync()
        return time.perf_counter() - t0, _flat(learner._theta()).cpu()

    def run_reference():
        ref_policy = GaussianMLPPolicy(args.obs_dim, args.act_dim, args.hidden).to(device)
        ref_policy.requires_grad_(False)
        theta = {k: v.to(device) for k, v in policy.params().items()}
        pre_d, post_d = prepare(pre, cfg, device), prepare(post, cfg, device)
        sync()
        t0 = time.perf_counter()
        new = garage_style_step(ref_policy, theta, pre_d, post_d, cfg)
        sync()
        return time.perf_counter() - t0, _flat(new).cpu()

    run_metarl(), run_reference()  # warm-up (allocators, kernels)
    ours, ref = [], []
    for _ in range(args.repeats):  # alternating, so that machine load hits both alike
        ours.append(run_metarl())
        ref.append(run_reference())
    t_ours = sorted(t for t, _ in ours)[len(ours) // 2]
    t_ref = sorted(t for t, _ in ref)[len(ref) // 2]
    start = _flat(policy.params())
    step_ours, step_ref = ours[0][1] - start, ref[0][1] - start
    rel = ((step_ours - step_ref).norm() / step_ref.norm().clamp_min(1e-30)).item()
    result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
              "tasks": args.tasks, "steps_per_task": args.episodes * args.horizon,
              "hidden": args.hidden, "cg_iters": cfg.cg_iters, "closed_form": not args.torch_func,
              "reference_s": t_ref, "metarl_s": t_ours,
              "speedup": t_ref / t_ours, "step_norm": step_ref.norm().item(),
              "relative_step_difference": rel, "same_step": bool(rel < 1e-3 and not math.isnan(rel))}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"MAML-TRPO meta-update, {args.tasks} tasks x {args.episodes * args.horizon} steps, "
              f"hidden {args.hidden}, {cfg.cg_iters} CG iterations, on {result['device']}")
        print(f"  garage-style reference : {t_ref:8.3f} s (median of {args.repeats})")
        print(f"  metarl                 : {t_ours:8.3f} s")
        print(f"  speed-up               : {result['speedup']:8.2f} x")
        print(f"  same step              : {result['same_step']} (relative difference {rel:.2e})")


if __name__ == "__main__":
    main()
