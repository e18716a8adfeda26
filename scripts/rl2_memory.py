"""Does a recurrent meta-policy use what the earlier episodes of its trial saw?

Evaluates a run's policy on the same held-out tasks and the same episode seeds in three
arms, which differ only in the state each episode after the first starts from:

- carried: the state the task's previous episode ended in, as ``metarl evaluate`` and
  training do (RL²'s adaptation);
- fresh: the initial state, a new trial at every episode (nothing remembered);
- foreign: the state another task's previous episode ended in (task i continues task
  i-1's trial state; two tasks or more). A policy that only needs *a* warmed-up state, not
  what its own task showed, does as well here as carried.

The first episode is the same in all three. Prints the success rate and return per
episode of the trial in each arm and, over episodes 2..K, the paired differences carried
minus fresh and carried minus foreign, with their standard errors over tasks.

    python scripts/rl2_memory.py RUN_DIR [--actions sample|mean] [--split test|train]
        [--tasks N] [--episodes K] [--seed S] [--json]

For learners that adapt by a recurrent state carried across episodes (rl2_ppo, varibad).
The run directory is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from metarl.algos.rl2 import Rl2Learner, Rl2State
from metarl.cli import USER_ERRORS
from metarl.errors import ConfigError
from metarl.evaluation import adaptation_curve
from metarl.sampling import EpisodeBatch
from metarl.trainer import load_run

ARMS = ("carried", "fresh", "foreign")


class Ablated:
    """An RL² learner (or VariBAD, its subclass) whose ``adapt`` hands each task's next
    episode the initial state (``"fresh"``) or the state another task's episode ended in
    (``"foreign"``: task i gets task i-1's); all else is the learner's."""

    def __init__(self, learner: Rl2Learner, arm: str) -> None:
        self._learner, self._arm = learner, arm

    def __getattr__(self, name: str):
        return getattr(self._learner, name)

    def adapt(self, state: Rl2State, batch: EpisodeBatch) -> Rl2State:
        if self._arm == "fresh":
            return state._replace(carry=None)
        return state._replace(carry={k: v.roll(1, 0) for k, v in batch.carry.items()})


def per_episode(result: dict, key: str) -> np.ndarray | None:
    """(tasks, episodes) ``key`` ("success" or "returns") of an adaptation curve with one
    episode per round; None where the tasks report no success."""
    rows = [t[key] for t in result["per_task"].values()]
    return None if any(v is None for row in rows for v in row) else np.array(rows, dtype=float)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """Mean over tasks of a - b (each task's mean over episodes 2..K) and its standard error
    (None for one task)."""
    d = (a[:, 1:] - b[:, 1:]).mean(1)
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--actions", choices=["sample", "mean"], default=None,
                    help="sample the policy's actions or take its mean (default: as the run's evaluation)")
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--tasks", type=int, default=None, help="tasks (default: the run's eval.num_tasks)")
    ap.add_argument("--episodes", type=int, default=None,
                    help="episodes per trial (default: the run's eval.adapt_steps + 1)")
    ap.add_argument("--seed", type=int, default=None, help="task and episode seed (default: the run's seed)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    try:
        for name in ("tasks", "episodes"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
        cfg, trainer = load_run(args.run_dir)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    learner = trainer.learner
    if not isinstance(learner, Rl2Learner):
        print(f"error: {args.run_dir} is a {cfg.algo.name} run; this script compares the trials of learners "
              "that adapt by a recurrent state (rl2_ppo, varibad)", file=sys.stderr)
        return 2
    episodes = cfg.eval.adapt_steps + 1 if args.episodes is None else args.episodes
    seed = cfg.seed if args.seed is None else args.seed
    tasks = trainer.eval_tasks(cfg.eval.num_tasks if args.tasks is None else args.tasks, seed, args.split)
    if args.actions is not None:
        mean = args.actions == "mean"
    else:  # as the run's own evaluation acts
        mean = learner.eval_deterministic if cfg.eval.deterministic is None else cfg.eval.deterministic
    arms = ARMS if len(tasks) > 1 else ARMS[:2]
    with trainer.make_sampler() as sampler:
        runs = {arm: adaptation_curve(learner if arm == "carried" else Ablated(learner, arm), sampler, tasks,
                                      episodes - 1, seed, trainer.max_steps, mean) for arm in arms}
    out = {"run_dir": str(args.run_dir), "env_steps": trainer.env_steps, "actions": "mean" if mean else "sample",
           "split": args.split, "tasks": len(tasks), "episodes": episodes, "seed": seed}
    table = []
    for key, name in (("returns", "return"), ("success", "success")):
        rows = {arm: per_episode(runs[arm], key) for arm in arms}
        if rows["carried"] is None:
            continue
        out[name] = {arm: r.mean(0).tolist() for arm, r in rows.items()}
        for arm in arms[1:]:
            out[name][f"carried_minus_{arm}_after_first"] = paired(rows["carried"], rows[arm]) if episodes > 1 else None
        table.append(name)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.run_dir} at {trainer.env_steps:,} env steps: {len(tasks)} {args.split} tasks, {episodes} "
          f"episodes per trial, actions: {out['actions']}, seed {seed}")
    print(f"{'episode':>7}" + "".join(f"  {name + ' ' + arm:>16}" for name in table for arm in arms))
    for i in range(episodes):
        print(f"{i + 1:>7}" + "".join(f"  {out[name][arm][i]:>16.3f}" for name in table for arm in arms))
    after = "episode 2" if episodes == 2 else f"episodes 2-{episodes}"
    for name in table if episodes > 1 else ():
        for arm in arms[1:]:
            d = out[name][f"carried_minus_{arm}_after_first"]
            spread = "one task: no standard error" if d["se"] is None else f"± {d['se']:.3f}, standard error over tasks"
            print(f"{after}, {name} carried - {arm}: {d['mean']:+.3f} ({spread})")
    if len(arms) < len(ARMS):
        print("(one task: no foreign arm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
