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

The same code on the same CPU and BLAS gives the same numbers. Another CPU or BLAS may move
the last bits of a float and, through them, a sampled action and the episode after it, and
so may a later commit that computes the policy's forward another way. Such a run is listed
with the largest difference, where it is, each adaptation row's mean return then and now,
and the commit that last wrote its eval.json.

    python scripts/recheck_results.py [RUN_OR_FOLDER ...] [--protocol] [--atol 0] [--exact] [--json FILE]

Where the numbers are not the same, a run still counts as reproduced when they are
"consistent": at every adaptation row the tasks' returns and success rates moved by no
more than 3 standard errors of their mean change, paired by task (what a second draw of
the episodes' noise gives; a changed behaviour moves them together). Meta-World's protocol
numbers have no tasks to pair: any change of them beyond ``--atol`` counts. Exit status: 0 when
every run checked is identical, within ``--atol`` or consistent (with ``--exact``: one of
the first two), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
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


def shown(run: Path) -> str:
    """``run`` relative to the repository where it lies inside it."""
    try:
        return str(run.resolve().relative_to(ROOT))
    except ValueError:
        return str(run)


def evaluate_args(committed: dict) -> list[str]:
    """``metarl evaluate`` arguments that repeat what wrote ``committed`` (an eval.json)."""
    args = ["--split", committed["split"], "--tasks", str(len(committed["per_task"])),
            "--adapt-steps", str(len(committed["adaptation"]) - 1)]
    # eval.json says which actions since 408260f; before, every learner's evaluation sampled.
    args += ["--actions", "mean" if committed.get("deterministic", False) else "sample"]
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
    ``consistent`` (not the same numbers, but no more apart than two draws of the episodes'
    noise: see ``consistent``), ``differs`` or ``other tasks``."""
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
    aggregates: list[tuple[str, object, object]] = []  # no tasks to pair: any change beyond atol counts
    if protocol and "metaworld_protocol" in committed:
        a, b = committed["metaworld_protocol"], new["metaworld_protocol"]
        aggregates += [(f"metaworld_protocol.{key}", a[key], b[key]) for key in ("success_rate", "return")]
        aggregates += [(f"metaworld_protocol.per_task_success[{k}]", v, b["per_task_success"].get(k))
                       for k, v in a["per_task_success"].items()]
    pairs += aggregates
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
    if worst <= atol:
        return "within atol", worst, where
    moved = [name for name, a, b in aggregates if a is not None and abs(float(a) - float(b)) > atol]
    if moved:
        return "differs", worst, moved[0]
    return ("consistent" if consistent(committed["per_task"], new["per_task"]) else "differs"), worst, where


def consistent(committed: dict, new: dict, z: float = 3.0) -> bool:
    """Whether, at every adaptation row, the tasks' returns and success rates moved by no
    more than ``z`` standard errors of their mean change (paired by task): what another
    draw of the same episodes' noise gives, where a changed behaviour moves them together."""
    for key in ("returns", "success"):
        rows = [row[key] for row in committed.values()]
        for k in range(len(rows[0])):
            if rows[0][k] is None:
                continue
            diffs = [float(new[task][key][k]) - float(row[key][k]) for task, row in committed.items()]
            mean = sum(diffs) / len(diffs)
            se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) if len(diffs) > 1 else 0.0
            if abs(mean) > z * se:
                return False
    return True


def recheck(run: Path, atol: float, protocol: bool) -> dict:
    """Re-evaluate a copy of ``run``; what ``compare`` says, the command and its time."""
    committed = json.loads((run / "eval.json").read_text())
    args = evaluate_args(committed if protocol else {k: v for k, v in committed.items() if k != "metaworld_protocol"})
    if protocol and "metaworld_protocol" in committed:
        args += ["--protocol", "metaworld"]
    command = f"metarl evaluate {shown(run)} {' '.join(args)}"
    with tempfile.TemporaryDirectory(prefix="metarl-recheck-") as tmp:
        copy = Path(tmp) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("wandb", "videos"))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "metarl.cli", "evaluate", str(copy), *args],
                              capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return {"run": shown(run), "status": "failed", "error": last, "command": command, "seconds": seconds}
        new = json.loads((copy / "eval.json").read_text())
    status, worst, where = compare(committed, new, atol, protocol)
    means = [(a["return_mean"], b["return_mean"]) for a, b in zip(committed["adaptation"], new["adaptation"], strict=True)]
    return {"run": shown(run), "status": status, "max_abs_diff": worst, "where": where, "return_means": means,
            "written_at": written_at(run / "eval.json"), "command": command, "seconds": seconds}


def written_at(path: Path) -> str | None:
    """The commit (and its date) that last changed ``path``, where git knows it."""
    done = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", str(path)], capture_output=True,
                          text=True, cwd=ROOT)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "results"],
                    help="run directories, or folders to search for them (default: results/)")
    ap.add_argument("--protocol", action="store_true",
                    help="also re-run Meta-World's protocol where eval.json holds its numbers (minutes per run)")
    ap.add_argument("--atol", type=float, default=0.0, help="largest absolute difference still accepted")
    ap.add_argument("--exact", action="store_true", help="count a 'consistent' run as not reproduced")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    runs = run_dirs(args.paths)
    if not runs:
        raise SystemExit("recheck_results: no run directory (config.yaml, eval.json, checkpoints/latest.pt) "
                         f"under {', '.join(map(str, args.paths))}")
    # The code the evaluations run: each `metarl evaluate` imports the working tree as it is then.
    head = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    commit = head.stdout.strip() or None
    results = []
    for i, run in enumerate(runs, 1):
        r = recheck(run, args.atol, args.protocol)
        results.append(r)
        detail = r.get("error") or ""
        if r["status"] in ("differs", "consistent", "within atol"):
            moved = ", ".join(f"k={k}: {a:.4g} -> {b:.4g}" for k, (a, b) in enumerate(r["return_means"]))
            detail = (f"max |diff| {r['max_abs_diff']:.3g} at {r['where']}; mean return {moved}; "
                      f"eval.json from {r['written_at'] or 'an unknown commit'}")
        print(f"[{i}/{len(runs)}] {r['status']:<12} {r['seconds']:6.1f} s  {r['run']}  {detail}", flush=True)
    accepted = ("identical", "within atol") if args.exact else ("identical", "within atol", "consistent")
    bad = [r for r in results if r["status"] not in accepted]
    counts = {s: sum(r["status"] == s for r in results) for s in dict.fromkeys(r["status"] for r in results)}
    print(f"{len(results) - len(bad)} of {len(results)} runs reproduce their eval.json "
          f"({', '.join(f'{n} {s}' for s, n in counts.items())})"
          + (f"; not: {', '.join(r['run'] for r in bad)}" if bad else ""))
    if args.json:
        record = {"commit": commit, "cpu": cpu_name(), "platform": platform.platform(), "runs": results}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if bad else 0


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
