"""PEARL's learning check on halfcheetah-vel (about 1.5 h on 2 CPU cores, minutes on a GPU).

    python scripts/learn_pearl.py [--env-steps 250000] [--device cuda] [--run-dir DIR] [--set KEY=VALUE ...]

``configs/pearl/halfcheetah-vel`` (oyster's settings: 2,000 gradient steps per 5,000 env
steps after 200,000 initial ones) trains for at most ``--env-steps`` env steps, then is
evaluated on its 30 held-out velocities. The check: the episode that acts on the posterior
of two exploration episodes (k = 2, oyster's ``num_exp_traj_eval``) must score above
MAML-TRPO's held-out return after one gradient step at 9.6M env steps, -144.7 (README,
"Numbers"). The default budget, 250k env steps (10 iterations, 20,000 gradient steps), is
the one ``results/checks`` reports (-90.3 on 2 CPU cores, 88 min); the check allows up to
1M (``--env-steps 1000000``, about a day on 2 CPU cores).

Re-running the same command continues an unfinished run from its last checkpoint, bit for
bit (``checkpoint_every=5``; each checkpoint carries the replay buffers, 168 B per
transition: ~160 MB at 1M env steps), so the check can span sessions. ``eval.every=5``
adds the held-out curve, as in the committed run. `make test-slow` runs it where a GPU is
present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from metarl.config import load_config
from metarl.evaluation import format_table
from metarl.rundir import RunDir
from metarl.trainer import Trainer

MAML_TRPO_HELD_OUT = -144.7
"""README: maml_trpo/halfcheetah-vel at 9.6M env steps, 40 held-out velocities, after one step."""
ENV_STEPS = 250_000
"""The budget of the committed check (results/checks); at most 1M."""


def run(run_dir: Path, env_steps: int = ENV_STEPS, device: str = "cpu", overrides: list[str] | None = None,
        seed: int = 0) -> dict:
    """Train (or continue) the check's run in ``run_dir`` and evaluate it."""
    resume = RunDir(run_dir).latest_checkpoint.exists()
    cfg = load_config("pearl/halfcheetah-vel", [
        f"max_env_steps={env_steps}", f"run_dir={run_dir}", f"seed={seed}", f"device={device}",
        "checkpoint_every=5", "eval.every=5", "logger.wandb=false", *(["resume=true"] if resume else []),
        *(overrides or [])])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.run()
    curve = [row["return_mean"] for row in result["adaptation"]]
    return {"env_steps": trainer.env_steps, "hours_this_call": (time.perf_counter() - t0) / 3600,
            "resumed": resume, "curve": curve, "threshold": MAML_TRPO_HELD_OUT,
            "passed": len(curve) > 2 and curve[2] > MAML_TRPO_HELD_OUT, "table": format_table(result)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env-steps", type=int, default=ENV_STEPS)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the learner; rollouts stay on CPU)")
    ap.add_argument("--run-dir", default="runs/learn_pearl_halfcheetah-vel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    out = run(Path(args.run_dir), args.env_steps, args.device, args.set, args.seed)
    print(out.pop("table"))
    print(json.dumps(out))
    sys.exit(0 if out["passed"] else 1)


if __name__ == "__main__":
    main()
