"""``metarl benchmark SUITE``: a suite of runs, trained to env-step budgets, evaluated with
Meta-World's own protocol, and summarised in a results table.

A suite is a YAML file (``benchmarks/<suite>.yaml``) naming runs: a config, an env-step
budget, seeds and overrides. Each (run, seed) trains into its own directory under the
results folder, ``<results>/<run>-s<seed>/``, which is a run directory like any other
(``metarl evaluate`` and ``metarl plot`` read it). Re-running the command skips finished
runs and resumes unfinished ones from their latest checkpoint, so a suite can span many
sessions and machines. When a run finishes, it is evaluated (metarl's adaptation curve,
plus Meta-World's ``metalearning_evaluation`` on Meta-World distributions), its checkpoint
is reduced to the weights, and the suite's summary is rewritten: ``<suite>.json``, the curve
``<suite>.png`` and the table in ``README.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metarl.checkpoint import write_text
from metarl.errors import ConfigError
from metarl.logging import read_jsonl
from metarl.rundir import RunDir

SUITE_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = Path("results/metaworld")
MARKER = "benchmark.json"
"""Written in a run directory by the runner: the run, its seed, the commits it ran on and,
once evaluated, ``finished: true``."""


@dataclass(frozen=True)
class SuiteRun:
    """One row of the table: a config trained to ``env_steps`` for each seed."""

    name: str
    config: str
    env_steps: int
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    runs: list[SuiteRun]
    overrides: list[str] = field(default_factory=list)
    """Applied to every run before its own overrides."""
    description: str = ""
    curve: str = "success"
    """What the curve PNG plots: ``success`` (Meta-World) or ``return`` (families without a
    success measure, such as locomotion)."""


CURVES = ("success", "return")


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``benchmarks/<name>.yaml``) or path; one-line errors."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown benchmark suite {name_or_path!r}: neither a YAML file nor a name "
                          f"under {SUITE_DIR}/; valid names: {', '.join(valid) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    _keys(data, Suite, str(path))
    runs = []
    for i, row in enumerate(data.get("runs") or []):
        _keys(row, SuiteRun, f"{path} runs[{i}]")
        missing = [k for k in ("name", "config", "env_steps") if k not in row]
        if missing:
            raise ConfigError(f"{path} runs[{i}] lacks {', '.join(missing)}")
        _types(row, f"{path} runs[{i}]")
        runs.append(SuiteRun(**row))
    if not runs:
        raise ConfigError(f"{path} names no runs (a 'runs:' list of name, config, env_steps, seeds)")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique, got {names}")
    curve = data.get("curve", "success")
    if curve not in CURVES:
        raise ConfigError(f"{path}: curve must be one of {', '.join(CURVES)}, got {curve!r}")
    return Suite(name=data.get("name", path.stem), runs=runs, overrides=list(data.get("overrides", [])),
                 description=data.get("description", ""), curve=curve)


def _types(row: dict[str, Any], where: str) -> None:
    """A suite row's values: what each key takes, or one line naming the first that is not."""
    def fail(key: str, wanted: str) -> None:
        raise ConfigError(f"{where}: {key} must be {wanted}, got {row[key]!r}")

    for key in ("name", "config", "notes"):
        if key in row and not isinstance(row[key], str):
            fail(key, "a string")
    if not isinstance(row["env_steps"], int) or isinstance(row["env_steps"], bool) or row["env_steps"] < 1:
        fail("env_steps", "a whole number >= 1")
    seeds = row.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool)
                                                            for x in seeds):
        fail("seeds", "a non-empty list of whole numbers")
    overrides = row.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(x, str) for x in overrides):
        fail("overrides", "a list of key=value strings")


def _keys(data: Any, cls: type, where: str) -> None:
    valid = list(cls.__dataclass_fields__)
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(valid)}")
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(valid)}")


def code_commit(repo: Path | None = None) -> str:
    """HEAD's short hash in ``repo`` (default: the working directory), with ``+dirty`` where
    tracked files outside results/ have changes (the code's state: results/ changes as runs
    write to it); ``unknown`` without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               capture_output=True, text=True, check=True, cwd=repo).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _read_marker(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def run_suite(suite: Suite, results: Path = RESULTS, extra: Sequence[str] = (),
              only: Sequence[str] = (), seed_major: bool = False) -> dict[str, Any]:
    """Train, evaluate and summarise every unfinished (run, seed) of ``suite``, in order.

    ``extra``: overrides applied to every run after the suite's (e.g. ``logger.wandb=false``);
    they are not part of a run's identity, so use them for how to run, not what to run.
    ``only``: run names to work on (the summary still covers the whole suite).
    ``seed_major``: every run's first seed before any run's second (one seed of each row
    early), instead of all seeds of a run before the next run.
    """
    from metarl import checkpoint
    from metarl.config import (
        load_config,
        resume_changes,
        saved_with_versioned_options,
        with_versioned_options,
    )
    from metarl.trainer import RunStopped, Trainer

    unknown = [n for n in only if n not in {r.name for r in suite.runs}]
    if unknown:
        raise ConfigError(f"unknown run {unknown[0]!r} in suite {suite.name}; valid: "
                          f"{', '.join(r.name for r in suite.runs)}")
    todo = [(run, seed) for run in suite.runs for seed in run.seeds if not only or run.name in only]
    for run, seed in todo:  # every unfinished row's config checked now, not hours in when its turn comes
        if not _read_marker(results / f"{run.name}-s{seed}").get("finished"):
            try:
                load_config(run.config, _run_overrides(suite, run, seed, extra, results))
            except ConfigError as err:
                raise ConfigError(f"suite {suite.name}, run {run.name}: {err}") from None
    commit = code_commit()  # the code this process runs, though HEAD may move while it does
    if seed_major:
        todo.sort(key=lambda item: item[0].seeds.index(item[1]))  # stable: runs keep their order
    for i, (run, seed) in enumerate(todo):
        run_dir = results / f"{run.name}-s{seed}"
        paths = RunDir(run_dir)
        marker = _read_marker(run_dir)
        if marker.get("finished"):
            print(f"[{i + 1}/{len(todo)}] {run.name} seed {seed}: finished, skipped")
            continue
        resume = paths.latest_checkpoint.is_file()
        if not resume:  # nothing to continue from: a clean start
            for path in (paths.metrics, paths.config, paths.eval, paths.eval_history):
                path.unlink(missing_ok=True)
        overrides = [*_run_overrides(suite, run, seed, extra, results), f"max_env_steps={run.env_steps}",
                     f"resume={str(resume).lower()}"]
        cfg = load_config(run.config, overrides)
        changes = []
        if resume:
            saved = saved_with_versioned_options(checkpoint.load(paths.latest_checkpoint)["config"])
            changes = resume_changes(saved, with_versioned_options(cfg, saved))
        if changes:
            raise ConfigError(f"{run_dir} was started with other settings than the suite now gives it "
                              f"({'; '.join(changes)}): restore {run.config} and the suite's overrides, "
                              f"or delete {run_dir} to run it again")
        state = "resuming" if resume else "starting"
        print(f"[{i + 1}/{len(todo)}] {run.name} seed {seed}: {state} ({run.config}, "
              f"{run.env_steps:,} env steps) in {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = {"suite": suite.name, "run": run.name, "seed": seed, "config": run.config,
                  "env_steps_budget": run.env_steps, "commits": [*marker.get("commits", []), commit],
                  "finished": False}
        _write_json(run_dir / MARKER, marker)
        trainer = Trainer(cfg)
        try:
            trainer.run()
        except RunStopped as stop:
            raise KeyboardInterrupt(stop.describe("re-running the same `metarl benchmark` command "
                                                  "continues the suite")) from None
        t0 = time.perf_counter()
        protocol = evaluate_protocol(trainer, cfg)
        if protocol is not None:
            data = json.loads(paths.eval.read_text())
            _write_json(paths.eval, data | {"metaworld_protocol": protocol | {"env_steps": trainer.env_steps}})
        _keep_weights_only(paths, checkpoint)
        marker |= {"finished": True, "env_steps": trainer.env_steps,
                   "eval_wall_time_s": time.perf_counter() - t0}
        _write_json(run_dir / MARKER, marker)
        write_summary(suite, results)
    return write_summary(suite, results)


def _run_overrides(suite: Suite, run: SuiteRun, seed: int, extra: Sequence[str], results: Path) -> list[str]:
    """What one (run, seed) of ``suite`` trains with, before its budget and resume flag."""
    return [*suite.overrides, *run.overrides, *extra, f"seed={seed}", f"run_dir={results / f'{run.name}-s{seed}'}"]


def evaluate_protocol(trainer: Any, cfg: Any) -> dict[str, Any] | None:
    """Meta-World's protocol at its defaults for a trained Meta-World run; None otherwise."""
    from metarl.envs.metaworld import MetaWorld

    dist = trainer.dist
    if not isinstance(dist, MetaWorld):
        return None
    from metarl.metaworld_protocol import protocol_settings, run_protocol

    settings = protocol_settings(dist.benchmark, len(dist.classes("test")))
    return run_protocol(trainer.learner, dist, settings, seed=0, max_episode_steps=cfg.max_episode_steps,
                        num_workers=cfg.sampler.num_workers)


def _keep_weights_only(paths: RunDir, checkpoint: Any) -> None:
    """The final checkpoint without optimiser state or extra state such as replay buffers
    (what ``metarl evaluate`` needs); the iteration checkpoints are removed."""
    state = checkpoint.load(paths.latest_checkpoint)
    state["learner"] = {k: (None if k == "optimizer" else v) for k, v in state["learner"].items()}
    state.pop("extra_state", None)
    checkpoint.save(state, paths.latest_checkpoint)
    for old in [*paths.iteration_checkpoints(), *paths.extra_state.glob("*.pt")]:
        old.unlink()


# ----------------------------------------------------------------------------- summary


def _run_summary(run_dir: Path) -> dict[str, Any]:
    marker = _read_marker(run_dir)
    metrics_path = RunDir(run_dir).metrics
    rows = read_jsonl(metrics_path) if metrics_path.is_file() else []
    out: dict[str, Any] = {"status": "finished" if marker.get("finished") else
                           ("running" if rows else "pending"),
                           "commits": marker.get("commits", []),
                           "env_steps": rows[-1]["env_steps"] if rows else 0,
                           "iterations": len(rows),
                           "wall_time_s": rows[-1]["wall_time_s"] if rows else 0.0}
    if rows:
        last = rows[-1]
        for key in ("train/success_pre", "train/success_post", "train/return_pre", "train/return_post"):
            if key in last:
                out[key] = last[key]
    eval_path = RunDir(run_dir).eval
    if marker.get("finished") and eval_path.is_file():
        ev = json.loads(eval_path.read_text())
        rows_k = ev["adaptation"]
        out["heldout_return_pre"], out["heldout_return_post"] = rows_k[0]["return_mean"], rows_k[-1]["return_mean"]
        out["heldout_k"] = rows_k[-1]["k"]
        out["heldout_success_pre"] = rows_k[0]["success_rate"]
        out["heldout_success_post"] = rows_k[-1]["success_rate"]
        protocol = ev.get("metaworld_protocol")
        # Unrecorded before the option existed, when a recurrent learner's (RL², VariBAD: they
        # adapt by episodes) evaluation episodes continued; MAML's family carries no state into
        # them, so its numbers hold for either start (a stateless learner records "adapted" since).
        start = (protocol or {}).get("settings", {}).get(
            "evaluation_start", "continued" if ev["unit"] == "episodes" else "adapted")
        if protocol and start != "adapted":  # the table holds one protocol
            print(f"metarl: {eval_path}'s Meta-World protocol numbers are with evaluation_start={start}, "
                  "not the default 'adapted': left out of the table (re-evaluate with `metarl evaluate "
                  f"{run_dir} --protocol metaworld`)", file=sys.stderr)
        elif protocol:
            out["protocol_success"] = protocol["success_rate"]
            out["protocol_return"] = protocol["return"]
    return out


def _mean_std(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}


def write_summary(suite: Suite, results: Path = RESULTS) -> dict[str, Any]:
    """``<suite>.json``, ``<suite>.png`` and ``README.md``'s table from the run directories."""
    summary: dict[str, Any] = {"suite": suite.name, "description": suite.description, "runs": {}}
    for run in suite.runs:
        seeds = {seed: _run_summary(results / f"{run.name}-s{seed}") for seed in run.seeds}
        finished = [s for s in seeds.values() if s["status"] == "finished"]
        aggregate = {key: _mean_std([s.get(key) for s in finished])
                     for key in ("protocol_success", "heldout_success_post", "heldout_return_pre",
                                 "heldout_return_post",
                                 "train/success_post", "train/return_post", "wall_time_s")}
        summary["runs"][run.name] = {"config": run.config, "env_steps_budget": run.env_steps,
                                     "overrides": [*suite.overrides, *run.overrides], "notes": run.notes,
                                     "seeds": seeds, "finished_seeds": len(finished), "aggregate": aggregate}
    results.mkdir(parents=True, exist_ok=True)
    _write_json(results / f"{suite.name}.json", summary)
    plot_suite(suite, results)
    _write_readme(results)
    return summary


def plot_suite(suite: Suite, results: Path) -> Path | None:
    """Train and held-out success (or return, as ``suite.curve`` says) after adaptation
    against env steps: mean and a band of one standard deviation over seeds; as markers at
    the final step, the protocol's success, or the held-out return before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarl.plotting import steps_formatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for run in suite.runs:
        curves = [read_jsonl(RunDir(results / f"{run.name}-s{s}").metrics) for s in run.seeds
                  if RunDir(results / f"{run.name}-s{s}").metrics.is_file()]
        curves = [c for c in curves if c]
        if not curves:
            continue
        for ax, key in ((axes[0], f"train/{suite.curve}_post"), (axes[1], f"eval/{suite.curve}_post")):
            series = [[(r["env_steps"], r[key]) for r in c if key in r] for c in curves]
            series = [s for s in series if s]
            if not series:
                continue
            n = min(len(s) for s in series)
            steps = np.array([x for x, _ in series[0][:n]])
            values = np.array([[y for _, y in s[:n]] for s in series])
            line, = ax.plot(steps, values.mean(0), label=f"{run.name} ({len(series)} seed(s))")
            if len(series) > 1:
                ax.fill_between(steps, values.mean(0) - values.std(0), values.mean(0) + values.std(0),
                                alpha=0.2, color=line.get_color())
            drawn = True
        summaries = [_run_summary(results / f"{run.name}-s{seed}") for seed in run.seeds]
        markers = ([("protocol_success", "*", "Meta-World protocol")] if suite.curve == "success" else
                   [("heldout_return_pre", "x", "held-out, before adaptation"),
                    ("heldout_return_post", "*", f"held-out, k = {summaries[0].get('heldout_k')}")])
        for key, marker, label in markers:
            finals = [(s["env_steps"], s[key]) for s in summaries if key in s]
            if finals:
                axes[1].scatter([x for x, _ in finals], [y for _, y in finals], marker=marker, s=80,
                                label=f"{run.name}: {label}")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_title(f"training tasks: {suite.curve} after adaptation")
    axes[1].set_title("held-out tasks: success after adaptation" if suite.curve == "success" else
                      "held-out tasks: return (metarl eval)")
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success rate" if suite.curve == "success" else "episode return")
        if suite.curve == "success":
            ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_formatter(steps_formatter())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = results / f"{suite.name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _fmt(agg: dict[str, float] | None, pct: bool = True) -> str:
    if agg is None:
        return "–"
    if pct:
        return f"{100 * agg['mean']:.1f} ± {100 * agg['std']:.1f}%"
    return f"{agg['mean']:.1f} ± {agg['std']:.1f}"


def _returns(pre: dict[str, float] | None, post: dict[str, float] | None) -> str:
    if pre is None or post is None:
        return "–"
    return f"{_fmt(pre, pct=False)} → {_fmt(post, pct=False)}"


def _write_readme(results: Path) -> None:
    """The table of every suite summary in ``results``, between the README's markers."""
    begin, end = "<!-- results table: written by metarl benchmark -->", "<!-- end of results table -->"
    lines = [begin, "",
             "| suite | run | config | env steps (budget) | seeds done | held-out success, Meta-World "
             "protocol | held-out success (metarl eval) | held-out return before → after (metarl eval) "
             "| train success (last iteration) | wall time / seed | commits |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        summary = json.loads(path.read_text())
        if "runs" not in summary or "suite" not in summary:
            continue
        for name, run in summary["runs"].items():
            seeds = run["seeds"].values()
            steps = max((s["env_steps"] for s in seeds), default=0)
            agg = run["aggregate"]
            wall = agg["wall_time_s"]
            wall_s = "–" if wall is None else f"{wall['mean'] / 60:.0f} min"
            if not run["finished_seeds"]:
                running = [s for s in seeds if s["status"] == "running"]
                wall_s = f"running ({len(running)} started)" if running else "pending"
            commits = sorted({c for s in seeds for c in s["commits"]})
            lines.append(f"| {summary['suite']} | {name} | `{run['config']}` | {steps:,} "
                         f"({run['env_steps_budget']:,}) | {run['finished_seeds']}/{len(seeds)} | "
                         f"{_fmt(agg['protocol_success'])} | {_fmt(agg['heldout_success_post'])} | "
                         f"{_returns(agg.get('heldout_return_pre'), agg['heldout_return_post'])} | "  # .get: summaries from before the column
                         f"{_fmt(agg['train/success_post'])} | {wall_s} | {', '.join(commits) or '–'} |")
    lines += ["", end]
    readme = results / "README.md"
    text = readme.read_text() if readme.is_file() else "# Results\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + "\n".join(lines) + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    write_text(readme, text)
