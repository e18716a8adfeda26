"""Learning check: RL² (PPO) on 2D navigation.

Trains configs/rl2_ppo/nav2d (trials of 2 episodes), then rolls trials on 40 held-out
test tasks and checks that the second episode's return beats the first by at least 2.0
(the agent found the goal in the first episode and goes back to it). For scale: standing
still scores about -38, walking straight to the goal about -2.

    python scripts/learn_rl2_nav2d.py [--iterations 200] [--run-dir runs/learn_rl2_nav2d]
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
    cfg = load_config("rl2_ppo/nav2d", [f"iterations={iterations}", f"run_dir={run_dir}", f"seed={seed}",
                                         "logger.wandb=false"])
    t0 = time.perf_counter()
    result = Trainer(cfg).run()
    minutes = (time.perf_counter() - t0) / 60
    curve = [row["return_mean"] for row in result["adaptation"]]
    return {"minutes": minutes, "curve": curve, "gain": curve[1] - curve[0],
            "passed": curve[1] - curve[0] >= 2.0, "table": format_table(result)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--run-dir", default="runs/learn_rl2_nav2d")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = run(args.iterations, Path(args.run_dir), args.seed)
    print(out.pop("table"))
    print(json.dumps(out))
    sys.exit(0 if out["passed"] else 1)


if __name__ == "__main__":
    main()
