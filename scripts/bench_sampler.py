"""Sampler throughput: env steps/s of several ways to roll the same episodes.

For each task family, side by side in one run:
  (a) one env stepped in a plain loop with the policy, one observation at a time;
  (b) gymnasium's AsyncVectorEnv over N envs, the policy batched in the main process
      (for Meta-World, the benchmark's own gym.make_vec("Meta-World/ML1-train", ...));
  (c) metarl's process sampler with 1 and 2 workers;
  (d) metarl's ray sampler with 2 workers (when ray is installed);
and the raw env.step rate without any policy, for the overhead column.

    python scripts/bench_sampler.py [--families ml1/pick-place-v3 halfcheetah-vel] [--metaworld-stock] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch

import metarl.envs
from metarl.policies import GaussianMLPPolicy
from metarl.sampling import Sampler


def plain_loop(dist, policy, task, steps: int, with_policy: bool = True) -> float:
    env = dist.make_env(task)
    obs, _ = env.reset(seed=0)
    params = policy.params()
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    fixed = rng.uniform(low, high, size=(steps, *env.action_space.shape)).astype(np.float32)
    t0 = time.perf_counter()
    for i in range(steps):
        if with_policy:
            with torch.no_grad():
                mean, std = torch.func.functional_call(policy, params, (torch.as_tensor(obs, dtype=torch.float32),))
                action = (mean + std * torch.randn_like(std)).numpy().clip(low, high)
        else:
            action = fixed[i]
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - t0)


def async_vector(dist, policy, tasks, num_envs: int, steps: int) -> float:
    if dist.name.startswith("ml1/"):
        import metaworld  # noqa: F401  (registers the Meta-World/... ids)

        envs = gym.make_vec("Meta-World/ML1-train", env_name=dist.name.removeprefix("ml1/"),
                            meta_batch_size=num_envs, vector_strategy="async", seed=0)
        if hasattr(envs, "call"):
            try:  # metaworld 3.1.1: a fresh ML vector env needs sample_tasks before reset
                envs.call("sample_tasks")
            except AttributeError:
                pass
    else:
        chosen = [tasks[i % len(tasks)] for i in range(num_envs)]
        fns = [lambda t=t: dist.make_env(t) for t in chosen]
        envs = gym.vector.AsyncVectorEnv(fns)
    obs, _ = envs.reset(seed=0)
    params = policy.params()
    low, high = envs.single_action_space.low, envs.single_action_space.high
    n = 0
    t0 = time.perf_counter()
    while n < steps:
        with torch.no_grad():
            mean, std = torch.func.functional_call(policy, params, (torch.as_tensor(obs, dtype=torch.float32),))
            actions = (mean + std * torch.randn_like(mean)).numpy().clip(low, high)
        obs, *_ = envs.step(actions)
        n += num_envs
    rate = n / (time.perf_counter() - t0)
    envs.close()
    return rate


def metarl_rate(dist, policy, tasks, episodes: int, backend: str, workers: int, max_steps: int) -> float:
    with Sampler(dist, policy.spec, backend=backend, num_workers=workers) as sampler:
        sampler.collect(tasks, policy.params(), episodes, seed=0, max_steps=5)  # start-up, env creation
        t0 = time.perf_counter()
        batch = sampler.collect(tasks, policy.params(), episodes, seed=1, max_steps=max_steps)
        return batch.env_steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["ml1/pick-place-v3", "halfcheetah-vel"])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=5, help="per task; N envs = tasks * episodes")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--metaworld-stock", action="store_true",
                    help="Meta-World families on the stock classes (fast=false) instead of metarl's fast step path")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.families:
        dist = metarl.envs.make(name, **({"fast": False} if args.metaworld_stock and name.startswith("ml") else {}))
        obs_space, act_space = dist.spaces
        policy = GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], args.hidden)
        policy.requires_grad_(False)
        tasks = dist.sample(args.tasks, "train", np.random.default_rng(0))
        num_envs = args.tasks * args.episodes
        steps = num_envs * args.max_steps
        row = {"num_envs": num_envs,
               "env_step_only": plain_loop(dist, policy, tasks[0], min(steps, 3000), with_policy=False),
               "plain_loop": plain_loop(dist, policy, tasks[0], min(steps, 3000)),
               "async_vector_env": async_vector(dist, policy, tasks, num_envs, steps)}
        for workers in (1, 2):
            row[f"process_{workers}"] = metarl_rate(dist, policy, tasks, args.episodes, "process", workers, args.max_steps)
        if not args.no_ray:
            try:
                import ray

                row["ray_2"] = metarl_rate(dist, policy, tasks, args.episodes, "ray", 2, args.max_steps)
                ray.shutdown()
            except ImportError:
                row["ray_2"] = None
        row["process_2_vs_plain"] = row["process_2"] / row["plain_loop"]
        row["process_2_vs_async"] = row["process_2"] / row["async_vector_env"]
        row["overhead_1_worker"] = 1 - row["process_1"] / row["env_step_only"]
        results[name] = row
    if args.json:
        print(json.dumps(results))
        return
    cols = ["env_step_only", "plain_loop", "async_vector_env", "process_1", "process_2", "ray_2"]
    print(f"env steps/s ({args.tasks} tasks x {args.episodes} episodes x {args.max_steps} steps, "
          f"policy {args.hidden})")
    print(f"{'family':<20}" + "".join(f"{c:>17}" for c in cols) + f"{'p2/plain':>10}{'p2/async':>10}{'overhead':>10}")
    for name, row in results.items():
        cells = "".join(f"{row[c]:>17.0f}" if row.get(c) else f"{'-':>17}" for c in cols)
        print(f"{name:<20}{cells}{row['process_2_vs_plain']:>10.2f}{row['process_2_vs_async']:>10.2f}"
              f"{row['overhead_1_worker']:>10.1%}")


if __name__ == "__main__":
    main()
