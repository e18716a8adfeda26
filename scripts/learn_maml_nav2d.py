"""Learning check: MAML-TRPO on 2D navigation with the MAML paper's settings.

Trains configs/maml_trpo/nav2d (20 tasks per meta-batch, 20 trajectories per task, one
inner step of 0.1), evaluates on held-out test tasks after k = 0..3 gradient steps, and
checks: post-adaptation return (k=1) >= -20 and at least 8 above k=0. For scale: standing
still scores about -38, walking straight to the goal about -2.

    python scripts/learn_maml_nav2d.py [--iterations 40] [--run-dir runs/learn_nav2d]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from metarl.config import load_config
from metarl.evaluation import format_table
from metarl.trainer import Trainer


def run(iterations: int, run_dir: Path, seed: int = 0) -> dict:
    cfg = load_config("maml_trpo/nav2d", [f"iterations={iterations}", f"run_dir={run_dir}",
                                           f"seed={seed}", "eval.num_tasks=40", "eval.adapt_steps=3"])
    t0 = time.perf_counter()
    result = Trainer(cfg).run()
    minutes = (time.perf_counter() - t0) / 60
    curve = [row["return_mean"] for row in result["adaptation"]]
    return {"minutes": minutes, "curve": curve, "gain": curve[1] - curve[0],
            "passed": curve[1] >= -20 and curve[1] - curve[0] >= 8, "table": format_table(result)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--run-dir", default="runs/learn_maml_nav2d")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = run(args.iterations, Path(args.run_dir), args.seed)
    print(out.pop("table"))
    print(json.dumps(out))
    sys.exit(0 if out["passed"] else 1)


if __name__ == "__main__":
    main()
