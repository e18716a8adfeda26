"""Two process workers stepping L episodes at a time in lockstep, against the two-loop ceiling.

A worker steps all of a task's episodes in one lockstep whatever ``sampler.max_lanes``
(which only caps how many tasks share one), so L lanes are had here by collecting each
task's episodes in rounds of L (``first_episode`` keeps every episode's seed): with the
defaults each worker has one task, and L = 10 / 5 / 2 / 1 steps 10 / 5 / 2 / 1 envs at once.
The rounds' extra round trips are counted: they are what stepping fewer lanes costs here.

Each round measures the ceiling (``bench_sampler.ceiling``: two independent single-env
loops at once), then one collection per lane count in a shuffled order; each rate is
compared with the mean of the ceilings measured before and after its round, and the JSON
holds the medians of those ratios and every rate.

    python scripts/bench_lanes.py [--family ml1/pick-place-v3] [--lanes 10 5 2 1] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from bench_sampler import ceiling

import metarl.envs
from metarl.policies import GaussianMLPPolicy
from metarl.sampling import Sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="ml1/pick-place-v3")
    ap.add_argument("--lanes", type=int, nargs="+", default=[10, 5, 2, 1])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist = metarl.envs.make(args.family)
    obs_space, act_space = dist.spaces
    policy = GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], [64, 64])
    policy.requires_grad_(False)
    tasks = dist.sample(args.tasks, "train", np.random.default_rng(0))
    sampler = Sampler(dist, policy.spec, backend="process", num_workers=2)
    try:
        sampler.collect(tasks, policy.params(), args.episodes, seed=0, max_steps=5)  # start-up, env creation
        rates: dict[int, list[float]] = {m: [] for m in args.lanes}
        ceilings = [ceiling(args.family, True, [64, 64], 2.5)]
        for r in range(args.rounds):
            order = list(args.lanes)
            np.random.default_rng(r).shuffle(order)
            for m in order:
                t0 = time.perf_counter()
                steps = sum(sampler.collect(tasks, policy.params(), min(m, args.episodes - first), seed=1 + r,
                                            max_steps=args.max_steps, first_episode=first).env_steps
                            for first in range(0, args.episodes, m))
                rates[m].append(steps / (time.perf_counter() - t0))
            ceilings.append(ceiling(args.family, True, [64, 64], 2.5))
    finally:
        sampler.close()
    around = (np.array(ceilings[:-1]) + np.array(ceilings[1:])) / 2
    print(json.dumps({"ceiling": ceilings, **{f"lanes_{m}": v for m, v in rates.items()},
                      **{f"lanes_{m}_vs_ceiling": float(np.median(np.array(v) / around)) for m, v in rates.items()}}))


if __name__ == "__main__":
    main()
