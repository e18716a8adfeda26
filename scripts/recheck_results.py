"""Re-evaluate committed runs from their weights and compare with the eval.json they hold.

Every run directory under the given paths (default: results/) that holds config.yaml,
eval.json and checkpoints/latest.pt is copied to a temporary directory and evaluated
there by ``metarl evaluate`` with the settings its eval.json was written with: the split,
the number of tasks (its ``per_task`` entries), the adaptation rounds (its rows), the
actions (mean or sample; files from before eval.json recorded which: sample, as every
learner did then) and the seed (eval.json's ``seed``; files written before it was
recorded: the run's). The committed files are not touched.

Each run gets one verdict:
- ``identical``: every return and success rate is the committed one, bit for bit;
- ``within atol``: none is further from it than ``--atol``;
- ``consistent``: not the same numbers, but what another draw of the episodes' noise
  gives: at every adaptation row the tasks' mean change (paired by task) is within a
  Student-t bound set so that a run differing by noise alone fails with probability ~1%
  over all its rows, and no task's return moved by more than twice the range of the
  file's returns (a change of behaviour moves the tasks together, or one task far);
- ``differs``: neither;
- ``other settings`` / ``other tasks``: the re-evaluation did not repeat the committed
  one (its unit, actions, seed, rows' episode counts or protocol settings; its tasks);
- ``failed``: the evaluation or the comparison raised (the error is listed).
Meta-World's protocol numbers (``--protocol``) have no tasks to pair: any change beyond
``--atol`` counts as ``differs``.

The same code on the same CPU and BLAS gives the same numbers. Another CPU or BLAS may move
the last bits of a float and, through them, a sampled action and the episode after it, and
so may a later commit that computes the policy's forward another way. A run that is not
identical is listed with its largest difference, where it is, each adaptation row's mean
return then and now, and the commit that last changed its eval.json.

    python scripts/recheck_results.py [RUN_OR_FOLDER ...] [--protocol] [--atol 0] [--exact] [--json FILE]

Exit status: 0 when every run checked is identical, within ``--atol`` or consistent (with
``--exact``: one of the first two), 1 otherwise.
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
import traceback
from pathlib import Path

from scipy import stats

from metarl.benchmark import code_commit
from metarl.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
FALSE_ALARM = 0.01
"""Chance that a run whose numbers differ by noise alone is called ``differs``."""
EVALUATE_TIMEOUT_S = 3 * 3600


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run directories at or under ``paths`` that can be re-checked, sorted."""
    found = set()
    for path in paths:
        if not path.exists():
            raise SystemExit(f"recheck_results: {path} does not exist")
        for config in [path / "config.yaml", *path.rglob("config.yaml")]:
            run = RunDir(config.parent)
            if run.config.is_file() and run.eval.is_file() and run.latest_checkpoint.is_file():
                found.add(run.path)
    return sorted(found)


def shown(run: Path) -> str:
    """``run`` relative to the repository where it lies inside it."""
    try:
        return str(run.resolve().relative_to(ROOT))
    except ValueError:
        return str(run)


def protocol_of(record: dict) -> dict | None:
    """The Meta-World protocol entry of an eval.json, or None."""
    return record.get("metaworld_protocol") or None


def evaluate_args(committed: dict, protocol: bool) -> list[str]:
    """``metarl evaluate`` arguments that repeat what wrote ``committed`` (an eval.json),
    Meta-World's protocol too if ``protocol`` and the file holds its numbers."""
    args = ["--split", committed["split"], "--tasks", str(len(committed["per_task"])),
            "--adapt-steps", str(len(committed["adaptation"]) - 1)]
    # eval.json says which actions since 408260f; before, every learner's evaluation sampled.
    args += ["--actions", "mean" if committed.get("deterministic", False) else "sample"]
    if "seed" in committed:
        args += ["--seed", str(committed["seed"])]
    settings = (protocol_of(committed) or {}).get("settings") if protocol else None
    if settings:
        args += ["--protocol", "metaworld", "--meta-batch-size", str(settings["meta_batch_size"]),
                 "--goals-per-class", str(settings["goals_per_class"]), "--num-evals", str(settings["num_evals"]),
                 "--adaptation-episodes", str(settings["adaptation_episodes"]),
                 "--evaluation-episodes", str(settings["evaluation_episodes"]),
                 "--protocol-seed", str(settings["seed"])]
        # recorded since it became an option; before, recurrent learners continued
        args += ["--evaluation-start", settings.get("evaluation_start", "continued")]
        if settings.get("max_episode_steps") is not None:
            args += ["--max-episode-steps", str(settings["max_episode_steps"])]
    return args


def _same(a: object, b: object) -> bool:
    """Equal numbers, None and None, or NaN and NaN."""
    if a is None or b is None:
        return a is b
    x, y = float(a), float(b)  # type: ignore[arg-type]
    return x == y or (math.isnan(x) and math.isnan(y))


def _gap(a: object, b: object) -> float:
    """|a - b|, infinite where one is None or NaN and the other not."""
    if _same(a, b):
        return 0.0
    if a is None or b is None:
        return math.inf
    diff = abs(float(a) - float(b))  # type: ignore[arg-type]
    return math.inf if math.isnan(diff) else diff


def compare(committed: dict, new: dict, atol: float, protocol: bool) -> tuple[str, float, str]:
    """(verdict, largest absolute difference, where): see the module's docstring."""
    if list(committed["per_task"]) != list(new["per_task"]) or any(
            committed["per_task"][k]["params"] != new["per_task"][k]["params"] for k in committed["per_task"]):
        return "other tasks", math.nan, "per_task"
    settings = [(key, committed[key], new.get(key)) for key in ("split", "unit", "deterministic", "seed")
                if key in committed]
    for i, (a, b) in enumerate(zip(committed["adaptation"], new["adaptation"], strict=True)):
        settings += [(f"adaptation[{i}].{key}", a[key], b.get(key)) for key in ("k", "episodes") if key in a]
    mine, theirs = protocol_of(committed), protocol_of(new)
    if protocol and mine:
        ignore = ("wall_time_s", "source")
        settings += [(f"metaworld_protocol.settings.{key}", v, (theirs or {}).get("settings", {}).get(key))
                     for key, v in mine["settings"].items() if key not in ignore]
    for name, a, b in settings:
        if a != b:
            return "other settings", math.nan, f"{name}: {a!r} -> {b!r}"
    numbers: list[tuple[str, object, object]] = []
    for i, (a, b) in enumerate(zip(committed["adaptation"], new["adaptation"], strict=True)):
        numbers += [(f"adaptation[{i}].{key}", a[key], b.get(key))
                    for key in ("return_mean", "return_std", "success_rate") if key in a]
    for task, row in committed["per_task"].items():
        for key in ("returns", "success"):
            numbers += [(f"per_task[{task}].{key}[{j}]", a, b)
                        for j, (a, b) in enumerate(zip(row[key], new["per_task"][task][key], strict=True))]
    aggregates: list[tuple[str, object, object]] = []  # no tasks to pair: any change beyond atol counts
    if protocol and mine:
        aggregates += [(f"metaworld_protocol.{key}", mine[key], theirs[key]) for key in ("success_rate", "return")]
        aggregates += [(f"metaworld_protocol.per_task_success[{k}]", v, theirs["per_task_success"].get(k))
                       for k, v in mine["per_task_success"].items()]
    gaps = [(_gap(a, b), name) for name, a, b in numbers + aggregates]
    worst, where = max(gaps, default=(0.0, ""))
    if worst == 0.0:
        return "identical", 0.0, ""
    if worst <= atol:
        return "within atol", worst, where
    moved = [name for gap, name in gaps if gap > atol and name.startswith("metaworld_protocol.")]
    if moved:
        return "differs", worst, moved[0]
    return ("consistent" if consistent(committed["per_task"], new["per_task"]) else "differs"), worst, where


def consistent(committed: dict, new: dict, false_alarm: float = FALSE_ALARM) -> bool:
    """Whether the per-task numbers moved as another draw of the episodes' noise would:
    at every adaptation row, for returns and success rates, (1) the mean change over the
    tasks (paired by task) within a two-sided Student-t bound, Bonferroni-corrected over the
    rows tested so that noise alone fails with probability ``false_alarm``, and (2) no
    task's return moved by more than twice the range of the returns the committed file
    holds (all tasks, all rows), which a single task moved far would otherwise pass: with
    one task moved by d, the t statistic is 1 whatever d is. The range is the whole file's
    because noise can flip a Meta-World task between failing and succeeding, a move larger
    than a row's spread when no task of that row succeeded. (A success rate cannot move by
    more than 1.)"""
    tests = []
    for key in ("returns", "success"):
        for k in range(len(next(iter(committed.values()))[key])):
            before = [row[key][k] for row in committed.values()]
            after = [new[task][key][k] for task in committed]
            if any(v is None for v in before + after):
                if any(not _same(a, b) for a, b in zip(before, after, strict=True)):
                    return False
                continue
            tests.append((key, [float(v) for v in before], [float(v) for v in after]))
    committed_returns = [v for row in committed.values() for v in row["returns"] if v is not None]
    far = 2 * (max(committed_returns) - min(committed_returns)) if committed_returns else math.inf
    for key, before, after in tests:
        diffs = [b - a for a, b in zip(before, after, strict=True)]
        if any(math.isnan(d) for d in diffs):
            return False
        if key == "returns" and max(map(abs, diffs)) > far:
            return False
        n = len(diffs)
        mean = sum(diffs) / n
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
        bound = stats.t.ppf(1 - false_alarm / (2 * len(tests)), n - 1) * se if n > 1 else 0.0
        if abs(mean) > bound:
            return False
    return True


def written_at(path: Path) -> str | None:
    """The commit (and date) that last changed ``path`` in git, with a note where the file has
    changes not committed; None where git does not know it."""
    try:
        log = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", str(path)], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", str(path)], capture_output=True,
                                 text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    if not log:
        return None
    return log + (" (changed since)" if changed else "")


def recheck(run: Path, atol: float, protocol: bool) -> dict:
    """Re-evaluate a copy of ``run``; the verdict, its details, the command and its time."""
    paths = RunDir(run)
    committed = json.loads(paths.eval.read_text())
    args = evaluate_args(committed, protocol)
    command = f"metarl evaluate {shown(run)} {' '.join(args)}"
    result = {"run": shown(run), "command": command, "written_at": written_at(paths.eval)}
    with tempfile.TemporaryDirectory(prefix="metarl-recheck-") as tmp:
        copy = RunDir(Path(tmp) / run.name)
        shutil.copytree(run, copy.path, ignore=shutil.ignore_patterns("wandb", "videos"))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "metarl.cli", "evaluate", str(copy.path), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=EVALUATE_TIMEOUT_S)
        result["seconds"] = time.perf_counter() - t0
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return result | {"status": "failed", "error": last}
        new = json.loads(copy.eval.read_text())
    status, worst, where = compare(committed, new, atol, protocol)
    means = [(a["return_mean"], b["return_mean"]) for a, b in zip(committed["adaptation"], new["adaptation"],
                                                                    strict=True)]
    return result | {"status": status, "max_abs_diff": worst, "where": where, "return_means": means}


def describe(r: dict) -> str:
    """One line's detail for a run that is not identical."""
    if r["status"] == "failed":
        return r["error"]
    if r["status"] in ("other settings", "other tasks"):
        return f"at {r['where']}"
    if r["status"] == "identical":
        return ""
    moved = ", ".join(f"k={k}: {a:.4g} -> {b:.4g}" for k, (a, b) in enumerate(r["return_means"]))
    return (f"max |diff| {r['max_abs_diff']:.3g} at {r['where']}; mean return {moved}; "
            f"eval.json last committed at {r['written_at'] or 'an unknown commit'}")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    commit = code_commit(ROOT)  # each `metarl evaluate` imports the working tree as it is then
    results = []
    for i, run in enumerate(runs, 1):
        try:
            r = recheck(run, args.atol, args.protocol)
        except Exception as e:  # one unreadable file or stuck evaluation does not end the sweep
            traceback.print_exc()
            r = {"run": shown(run), "status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": math.nan}
        results.append(r)
        print(f"[{i}/{len(runs)}] {r['status']:<14} {r['seconds']:6.1f} s  {r['run']}  {describe(r)}", flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
