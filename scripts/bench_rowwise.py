"""The sampler's row-wise policy forward against one matrix product over the rows.

For a Gaussian MLP policy of each width (obs 39, 4 actions, as on Meta-World), prints as
JSON, for 1, 10, 16 and 64 rows: microseconds per call of the module's forward (one torch
product over the rows) and of ``GaussianMLPPolicy.rowwise()`` (each row its own product,
in numpy), called back to back (``us_per_call``) and, on 10 rows, as the sampler calls it:
once after each round of 10 pick-place env steps, which evict its code and data from the
caches (``us_per_call_between_env_steps``); and for each how many row counts 1-16 gave
some row other bits than that row alone does (``rows_that_move``: the one product's
dependence on the row count on this machine; the row-wise forward must give 0).

    python scripts/bench_rowwise.py [--hidden 512 512] [--repeats 300]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import metarl.envs
from metarl.policies import GaussianMLPPolicy, one_blas_thread


def per_call_us(f, x: np.ndarray, repeats: int) -> float:
    for _ in range(20):
        f(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(x)
    return (time.perf_counter() - t0) / repeats * 1e6


def between_env_steps_us(f, x: np.ndarray, envs: list, repeats: int) -> float:
    """Microseconds per call of ``f(x)`` made after each round of one step of every env."""
    action = np.zeros(envs[0].action_space.shape, np.float32)
    total = 0.0
    for _ in range(repeats):
        for env in envs:
            if env.step(action)[3]:
                env.reset(seed=0)
        t0 = time.perf_counter()
        f(x)
        total += time.perf_counter() - t0
    return total / repeats * 1e6


def rows_that_move(f, obs: np.ndarray) -> int:
    """How many row counts m in 1..16 give some row of obs[s:s+m] other bits than alone."""
    alone = np.concatenate([f(obs[i:i + 1].copy()) for i in range(len(obs))])
    return sum(any(not np.array_equal(f(obs[s:s + m]), alone[s:s + m]) for s in range(0, 20, 3))
               for m in range(1, 17))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", action="append", help="repeatable; default 512 512 and 64 64")
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a sampler worker
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dist = metarl.envs.make("ml1/pick-place-v3")
    task = dist.sample(1, "train", np.random.default_rng(0))[0]
    envs = [dist.make_env(task) for _ in range(10)]
    for env in envs:
        env.reset(seed=0)
    out = {}
    blas = one_blas_thread()  # as in a sampler worker's collection
    for hidden in args.hidden or [[512, 512], [64, 64]]:
        policy = GaussianMLPPolicy(39, 4, hidden).requires_grad_(False)
        rowwise = policy.rowwise()
        ways = {"one_product": lambda x, p=policy: p(torch.from_numpy(x))[0].numpy(),
                "rowwise": lambda x, r=rowwise: r(x)[0]}  # as the sampler calls each: arrays in and out
        obs = rng.standard_normal((40, 39), np.float32)
        out["x".join(map(str, hidden))] = {
            name: {"us_per_call": {m: round(per_call_us(f, rng.standard_normal((m, 39), np.float32), args.repeats), 1)
                                   for m in (1, 10, 16, 64)},
                   "us_per_call_between_env_steps": round(between_env_steps_us(f, rng.standard_normal((10, 39), np.float32), envs,
                                                                               args.repeats), 1),
                   "rows_that_move": rows_that_move(f, obs)}
            for name, f in ways.items()}
    blas.restore_original_limits()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
