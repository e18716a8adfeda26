"""Record, or compare against, what short training runs produce, to refactor without
changing numbers (the meta-learner interface issue).

    python scripts/behaviour_reference.py record tests/reference/behaviour
    python scripts/behaviour_reference.py compare tests/reference/behaviour

Each case is a short `metarl train` run on nav2d (seed 0, local sampler, W&B off). `record`
keeps its metrics.jsonl without timings, its eval.json and its final checkpoint (so a
later version can be checked to load checkpoints written by this one). `compare` runs the
same cases and reports, per case, whether metrics and eval.json are identical, and if not
how many values differ and the first few. Runs use one
torch thread and floats are compared exactly: record and compare on the same machine
(another BLAS may round differently), e.g. record at the commit before a refactor, then
compare after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from metarl import checkpoint

CASES = {
    "maml_trpo": ["maml_trpo/nav2d", "iterations=3", "meta_batch_size=4", "episodes_per_task=4",
                  "eval.num_tasks=3", "eval.adapt_steps=2"],
    "rl2_ppo": ["rl2_ppo/nav2d", "iterations=3", "meta_batch_size=4", "episodes_per_task=3",
                "algo.gru_size=16", "eval.num_tasks=3", "eval.adapt_steps=2"],
    "sb3_multitask": ["sb3_multitask/nav2d", "iterations=1", "algo.steps_per_iteration=1024",
                      "eval.num_tasks=2", "eval.adapt_steps=1"],
}
COMMON = ["seed=0", "sampler.backend=local", "logger.wandb=false"]
TIMINGS = ("time/", "wall_time_s")


def run_case(name: str, run_dir: Path) -> tuple[list[dict], dict]:
    """Train one case into ``run_dir``; its metrics rows without timings, and eval.json."""
    cli = "import sys; from metarl.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", cli, "train", *CASES[name], *COMMON, f"run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # thread counts must not move the numbers
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    rows = [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMINGS)}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    evaluation.pop("wall_time_s", None)
    return rows, evaluation


def self_contained(checkpoints: Path) -> dict:
    """``latest.pt`` with the optimiser's state from the extra file it names folded back in,
    so each recorded checkpoint is one file (these cases keep no other extra state)."""
    state = checkpoint.load(checkpoints / "latest.pt")
    name = state.pop("extra_state", None)
    if name:
        training = checkpoint.load(checkpoints / name)
        assert training["extra"] is None, "a case with buffers needs its extra file recorded too"
        state["learner"]["optimizer"] = training["optimizer"]
    return state


def differences(ref: list | dict, new: list | dict, where: str = "") -> list[str]:
    """Paths (with both values) where two JSON values differ; a key only in ``new`` is
    reported as added."""
    if type(ref) is not type(new):
        return [f"{where or '(top)'}: {ref!r} vs {new!r}"]
    if isinstance(ref, dict):
        out = []
        for key in sorted(set(ref) | set(new)):
            if key not in new:
                out.append(f"{where}.{key}: missing")
            elif key not in ref:
                out.append(f"{where}.{key}: added")
            else:
                out += differences(ref[key], new[key], f"{where}.{key}")
        return out
    if isinstance(ref, list):
        if len(ref) != len(new):
            return [f"{where} (length {len(ref)} vs {len(new)})"]
        return [d for i, (a, b) in enumerate(zip(ref, new, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if ref == new else [f"{where}: {ref!r} vs {new!r}"]


def report(label: str, found: list[str]) -> str:
    if not found:
        return f"{label} identical"
    return f"{label} {len(found)} difference(s): " + "; ".join(found[:4]) + (" ..." if len(found) > 4 else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["record", "compare"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            run_dir = Path(tmp) / name
            rows, evaluation = run_case(name, run_dir)
            if args.mode == "record":
                args.dir.mkdir(parents=True, exist_ok=True)
                (args.dir / f"{name}.metrics.json").write_text(json.dumps(rows, indent=1))
                (args.dir / f"{name}.eval.json").write_text(json.dumps(evaluation, indent=1))
                checkpoint.save(self_contained(run_dir / "checkpoints"), args.dir / f"{name}.fixture.pt")
                print(f"{name}: recorded {len(rows)} iterations")
                continue
            ref_rows = json.loads((args.dir / f"{name}.metrics.json").read_text())
            ref_eval = json.loads((args.dir / f"{name}.eval.json").read_text())
            metric_diffs, eval_diffs = differences(ref_rows, rows, "metrics"), differences(ref_eval, evaluation, "eval")
            failed += bool(metric_diffs or eval_diffs)
            print(f"{name}: {report('metrics', metric_diffs)}; {report('eval.json', eval_diffs)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
