"""Two process workers at several ``sampler.max_lanes``, against the two-loop ceiling.

With the defaults each worker rolls one task's 10 episodes, so ``max_lanes`` 10 / 5 / 2 / 1
steps them 10 / 5 / 2 / 1 at a time in lockstep (as many envs per worker).

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
    samplers = {m: Sampler(dist, policy.spec, backend="process", num_workers=2, max_lanes=m) for m in args.lanes}
    try:
        for sampler in samplers.values():  # start-up, env creation
            sampler.collect(tasks, policy.params(), args.episodes, seed=0, max_steps=5)
        rates: dict[int, list[float]] = {m: [] for m in args.lanes}
        ceilings = [ceiling(args.family, True, [64, 64], 2.5)]
        for r in range(args.rounds):
            order = list(samplers.items())
            np.random.default_rng(r).shuffle(order)
            for m, sampler in order:
                t0 = time.perf_counter()
                batch = sampler.collect(tasks, policy.params(), args.episodes, seed=1 + r, max_steps=args.max_steps)
                rates[m].append(batch.env_steps / (time.perf_counter() - t0))
            ceilings.append(ceiling(args.family, True, [64, 64], 2.5))
    finally:
        for sampler in samplers.values():
            sampler.close()
    around = (np.array(ceilings[:-1]) + np.array(ceilings[1:])) / 2
    print(json.dumps({"ceiling": ceilings, **{f"lanes_{m}": v for m, v in rates.items()},
                      **{f"lanes_{m}_vs_ceiling": float(np.median(np.array(v) / around)) for m, v in rates.items()}}))


if __name__ == "__main__":
    main()
