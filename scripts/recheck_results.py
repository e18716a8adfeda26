"""Re-evaluate committed runs from their weights and compare with the eval.json they hold.

Every run directory under the given paths (default: results/) that holds config.yaml,
eval.json and checkpoints/latest.pt is copied to a temporary directory and evaluated
there by ``metarl evaluate`` with the settings its eval.json was written with: the split,
the number of tasks (its ``per_task`` entries), the adaptation rounds (its rows), the
actions (mean or sample) and the seed (eval.json's ``seed``; files written before it was
recorded: the run's). The committed files are not touched. The new eval.json must name the
same tasks with the same parameters, and every return and success rate must equal the
committed one (exactly, or within ``--atol``); with ``--protocol``, Meta-World's protocol
numbers too, at the committed file's settings.

Same code, same machine class: identical. Another CPU or BLAS may move the last bits of a
float and, through them, a sampled action; such a run shows up as "differs" with the size
of the largest difference, which says whether it matters.

    python scripts/recheck_results.py [RUN_OR_FOLDER ...] [--protocol] [--atol 0] [--json FILE]

Exit status: 0 when every run checked is identical (or within ``--atol``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run directories at or under ``paths`` that can be re-checked, sorted."""
    found = set()
    for path in paths:
        if not path.exists():
            raise SystemExit(f"recheck_results: {path} does not exist")
        for config in [path / "config.yaml", *path.rglob("config.yaml")]:
            run = config.parent
            if (run / "eval.json").is_file() and (run / "checkpoints" / "latest.pt").is_file():
                found.add(run)
    return sorted(found)


def evaluate_args(committed: dict) -> list[str]:
    """``metarl evaluate`` arguments that repeat what wrote ``committed`` (an eval.json)."""
    args = ["--split", committed["split"], "--tasks", str(len(committed["per_task"])),
            "--adapt-steps", str(len(committed["adaptation"]) - 1)]
    if "deterministic" in committed:
        args += ["--actions", "mean" if committed["deterministic"] else "sample"]
    if "seed" in committed:
        args += ["--seed", str(committed["seed"])]
    protocol = committed.get("metaworld_protocol")
    if protocol is not None:
        s = protocol["settings"]
        args += ["--meta-batch-size", str(s["meta_batch_size"]), "--goals-per-class", str(s["goals_per_class"]),
                 "--num-evals", str(s["num_evals"]), "--adaptation-episodes", str(s["adaptation_episodes"]),
                 "--evaluation-episodes", str(s["evaluation_episodes"]), "--protocol-seed", str(s["seed"])]
        if s.get("max_episode_steps") is not None:
            args += ["--max-episode-steps", str(s["max_episode_steps"])]
    return args


def compare(committed: dict, new: dict, atol: float, protocol: bool) -> tuple[str, float, str]:
    """(status, largest absolute difference, where): ``identical``, ``within atol``,
    ``differs`` or ``other tasks``."""
    if list(committed["per_task"]) != list(new["per_task"]) or any(
            committed["per_task"][k]["params"] != new["per_task"][k]["params"] for k in committed["per_task"]):
        return "other tasks", math.nan, "per_task"
    pairs: list[tuple[str, object, object]] = []
    for i, (a, b) in enumerate(zip(committed["adaptation"], new["adaptation"], strict=True)):
        pairs += [(f"adaptation[{i}].{key}", a[key], b.get(key))  # what an older file recorded
                  for key in ("k", "episodes", "return_mean", "return_std", "success_rate") if key in a]
    for task, row in committed["per_task"].items():
        for key in ("returns", "success"):
            pairs += [(f"per_task[{task}].{key}[{j}]", a, b)
                      for j, (a, b) in enumerate(zip(row[key], new["per_task"][task][key], strict=True))]
    if protocol and "metaworld_protocol" in committed:
        a, b = committed["metaworld_protocol"], new["metaworld_protocol"]
        pairs += [(f"metaworld_protocol.{key}", a[key], b[key]) for key in ("success_rate", "return")]
        pairs += [(f"metaworld_protocol.per_task_success[{k}]", v, b["per_task_success"].get(k))
                  for k, v in a["per_task_success"].items()]
    worst, where = 0.0, ""
    for name, a, b in pairs:
        if a is None or b is None:
            if a is not b:
                return "differs", math.inf, name
            continue
        diff = abs(float(a) - float(b))
        if diff > worst:
            worst, where = diff, name
    if worst == 0.0:
        return "identical", 0.0, ""
    return ("within atol" if worst <= atol else "differs"), worst, where


def recheck(run: Path, atol: float, protocol: bool) -> dict:
    """Re-evaluate a copy of ``run``; what ``compare`` says, the command and its time."""
    committed = json.loads((run / "eval.json").read_text())
    args = evaluate_args(committed if protocol else {k: v for k, v in committed.items() if k != "metaworld_protocol"})
    if protocol and "metaworld_protocol" in committed:
        args += ["--protocol", "metaworld"]
    command = f"metarl evaluate {run} {' '.join(args)}"
    with tempfile.TemporaryDirectory(prefix="metarl-recheck-") as tmp:
        copy = Path(tmp) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("wandb", "videos"))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "metarl.cli", "evaluate", str(copy), *args],
                              capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return {"run": str(run), "status": "failed", "error": last, "command": command, "seconds": seconds}
        new = json.loads((copy / "eval.json").read_text())
    status, worst, where = compare(committed, new, atol, protocol)
    return {"run": str(run), "status": status, "max_abs_diff": worst, "where": where, "command": command,
            "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "results"],
                    help="run directories, or folders to search for them (default: results/)")
    ap.add_argument("--protocol", action="store_true",
                    help="also re-run Meta-World's protocol where eval.json holds its numbers (minutes per run)")
    ap.add_argument("--atol", type=float, default=0.0, help="largest absolute difference still accepted")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    runs = run_dirs(args.paths)
    if not runs:
        raise SystemExit("recheck_results: no run directory (config.yaml, eval.json, checkpoints/latest.pt) "
                         f"under {', '.join(map(str, args.paths))}")
    results = []
    for i, run in enumerate(runs, 1):
        r = recheck(run, args.atol, args.protocol)
        results.append(r)
        detail = r.get("error") or (f"max |diff| {r['max_abs_diff']:.3g} at {r['where']}" if r["where"] else "")
        print(f"[{i}/{len(runs)}] {r['status']:<12} {r['seconds']:6.1f} s  {run}  {detail}", flush=True)
    bad = [r for r in results if r["status"] not in ("identical", "within atol")]
    print(f"{len(results) - len(bad)} of {len(results)} runs reproduce their eval.json"
          + (f"; not: {', '.join(r['run'] for r in bad)}" if bad else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
