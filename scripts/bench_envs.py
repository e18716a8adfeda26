"""Step rate of one env of each task family (random actions, one process).

    python scripts/bench_envs.py [--steps 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import metarl.envs

FAMILIES = ["nav2d", "halfcheetah-vel", "halfcheetah-dir", "ant-dir", "ant-goal", "car-goal",
            "car-speed", "highway-parking", "ml1/pick-place-v3", "ml1/reach-v3"]


def step_rate(name: str, steps: int) -> float:
    dist = metarl.envs.make(name)
    env = dist.make_env(dist.sample(1, "train", np.random.default_rng(0))[0])
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rates = {}
    for name in FAMILIES:
        try:
            rates[name] = step_rate(name, args.steps)
        except ImportError as err:
            rates[name] = float("nan")
            print(f"{name}: skipped ({err})")
    if args.json:
        print(json.dumps(rates))
        return
    print(f"{'task family':<22} {'env steps/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:>12.0f}")


if __name__ == "__main__":
    main()
