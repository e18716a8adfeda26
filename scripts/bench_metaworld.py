"""Meta-World step rate: stock classes vs metarl's fast path, with the physics ceiling.

For each v3 environment (ML1 train task 0, the same uniform random actions for both),
env.step calls per second of the stock class and of the fast class, measured in
alternating blocks so that machine load hits both alike; and the "ceiling": the same
MuJoCo calls a step makes (mj_step x frame_skip, mj_rnePostConstraint, mj_forward),
timed alone along the same trajectory.

    python scripts/bench_metaworld.py [--steps 1000] [--envs pick-place-v3 reach-v3] [--json]
                                      [--dot-probe auto|sequential|numpy]

The fast path sums small norms in Python only where numpy's ``dot`` is a sequential sum
on this machine (``dot_is_sequential``, a start-up probe); ``--dot-probe`` forces either
branch to time it. ``sequential`` on a machine whose probe says no times the Python sums
there, but that fast path is then not bit-identical to stock: use it for timing only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import mujoco
import numpy as np


def _step_seconds(env, actions: np.ndarray) -> float:
    total = 0.0
    for a in actions:
        if env.curr_path_length >= env.max_path_length:
            env.reset()
        t0 = time.perf_counter()
        env.step(a)
        total += time.perf_counter() - t0
    return total


def _ceiling_seconds(env, actions: np.ndarray) -> float:
    """Time of the MuJoCo calls alone along the same trajectory: the env moves its mocap
    and sets the grip untimed, then only mj_step/mj_rnePostConstraint/mj_forward count."""
    model, data, n = env.model, env.data, env.frame_skip
    env.reset()
    total = 0.0
    for a in actions:
        if env.curr_path_length >= env.max_path_length:
            env.reset()
        env.set_xyz_action(a[:3])
        data.ctrl[0], data.ctrl[1] = a[-1], -a[-1]
        t0 = time.perf_counter()
        mujoco.mj_step(model, data, nstep=n)
        mujoco.mj_rnePostConstraint(model, data)
        mujoco.mj_forward(model, data)
        total += time.perf_counter() - t0
        env.curr_path_length += 1
    return total


def bench(env_name: str, steps: int, blocks: int = 4) -> dict[str, float]:
    import metaworld

    from metarl.envs.metaworld_fast import env_class

    task = metaworld.ML1(env_name, seed=0).train_tasks[0]
    envs = {}
    for label, fast in (("stock", False), ("fast", True)):
        env = env_class(env_name, fast=fast)()
        env.set_task(task)
        env.reset()
        envs[label] = env
    if type(envs["fast"]) is type(envs["stock"]):
        raise SystemExit(f"{env_name}: no fast class for the installed metaworld (see the log)")
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4)).astype(np.float32)
    seconds = {"stock": 0.0, "fast": 0.0}
    for block in np.array_split(actions, blocks):
        for label, env in envs.items():
            seconds[label] += _step_seconds(env, block)
    ceiling = _ceiling_seconds(envs["fast"], actions)
    for env in envs.values():
        env.close()
    return {"stock": steps / seconds["stock"], "fast": steps / seconds["fast"],
            "ceiling": steps / ceiling}


def main() -> None:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="steps per env and class")
    ap.add_argument("--envs", nargs="+", default=list(ALL_V3_ENVIRONMENTS),
                    help="v3 env names (default: all 50)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--dot-probe", choices=["auto", "sequential", "numpy"], default="auto",
                    help="the answer of the fast path's dot probe: measured (auto), or forced "
                         "(sequential: timing only where the probe says no)")
    args = ap.parse_args()
    unknown = sorted(set(args.envs) - set(ALL_V3_ENVIRONMENTS))
    if unknown:
        raise SystemExit(f"unknown Meta-World v3 env(s): {', '.join(unknown)}; "
                         f"valid: {', '.join(ALL_V3_ENVIRONMENTS)}")
    warnings.filterwarnings("ignore")
    from metarl.envs import metaworld_fast

    probe = metaworld_fast.dot_is_sequential()
    if args.dot_probe != "auto":  # before any fast class or shim is built on the answer
        forced = args.dot_probe == "sequential"
        metaworld_fast.dot_is_sequential = lambda: forced
    branch = "sequential" if metaworld_fast.dot_is_sequential() else "numpy"
    print(f"dot probe here: {'sequential' if probe else 'numpy'}; timing the {branch} branch"
          + (" (forced)" if args.dot_probe != "auto" else ""), file=sys.stderr if args.json else sys.stdout)
    rows = {}
    for name in args.envs:
        rows[name] = bench(name, args.steps)
        if not args.json:
            r = rows[name]
            print(f"{name:<32} stock {r['stock']:7.0f}  fast {r['fast']:7.0f}  "
                  f"x{r['fast'] / r['stock']:4.2f}  ceiling {r['ceiling']:7.0f} "
                  f"(x{r['ceiling'] / r['stock']:4.1f})", flush=True)
    speedups = [r["fast"] / r["stock"] for r in rows.values()]
    summary = {"median_speedup": statistics.median(speedups), "min_speedup": min(speedups),
               "median_ceiling_ratio": statistics.median(r["ceiling"] / r["stock"] for r in rows.values())}
    summary["dot_branch"] = branch
    if args.json:
        print(json.dumps({"envs": rows, **summary}))
        return
    print(f"\n{len(rows)} envs: median speed-up x{summary['median_speedup']:.2f} "
          f"(min x{summary['min_speedup']:.2f}); median ceiling x{summary['median_ceiling_ratio']:.1f} "
          "the stock rate")


if __name__ == "__main__":
    main()
