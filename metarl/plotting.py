"""``metarl plot``: learning curves against env steps, and adaptation curves from eval.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metarl.errors import ConfigError
from metarl.logging import read_jsonl
from metarl.rundir import RunDir

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def steps_formatter() -> Any:
    """Tick labels for env-step axes: 0, 200k, 1.5M, 20M."""
    from matplotlib.ticker import FuncFormatter

    def label(x: float, _pos: int | None = None) -> str:
        for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= scale:
                return f"{x / scale:g}{suffix}"
        return f"{x:g}"

    return FuncFormatter(label)


def format_steps_axis(ax: Axes, nbins: int = 6) -> None:
    """Env-step x axis: short labels (see ``steps_formatter``) and at most ``nbins`` + 1 round ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(steps_formatter())


def _adaptation_axis(evals: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Which adaptation x to plot (``"episodes"`` or ``"k"``) and its axis label; the label is
    None where the runs' k units differ (then each legend entry names its unit)."""
    rows = [row for ev in evals for row in ev["adaptation"]]
    if rows and all(row.get("episodes") is not None for row in rows):
        return "episodes", "episodes of the held-out task seen"
    units = {ev["unit"] for ev in evals}
    if len(units) == 1:
        return "k", f"adaptation k ({units.pop().replace('_', ' ')})"
    return "k", None


def draw_runs(run_dirs: list[Path], by_run: bool = False) -> Figure:
    """The figure ``plot_runs`` saves (neither saved nor closed here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[Path]] = defaultdict(list)
    metrics: dict[Path, list[dict[str, Any]]] = {}
    names = [run.name for run in run_dirs]
    unique = len(set(names)) == len(names)
    for run in run_dirs:
        paths = RunDir(run)
        if not paths.config.is_file():
            raise ConfigError(f"{run} is not a run directory (no config.yaml)")
        metrics[run] = read_jsonl(paths.metrics) if paths.metrics.is_file() else []
        if not metrics[run]:
            raise ConfigError(f"{run} has no iterations to plot yet (metrics.jsonl is missing or empty)")
        cfg = yaml.safe_load(paths.config.read_text())
        by_config = f"{cfg['algo']['name']} / {cfg['tasks']['name']}"
        groups[(run.name if unique else str(run)) if by_run else by_config].append(run)
    evals = {run: json.loads(RunDir(run).eval.read_text()) for run in run_dirs if RunDir(run).eval.is_file()}
    has_eval = bool(evals)
    has_success = any("train/success_post" in metrics[r][0] for r in run_dirs)
    x_key, x_label = _adaptation_axis(list(evals.values()))
    ncols = 1 + has_success + has_eval
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    axes = axes[0]
    for label, runs in groups.items():
        rows = [metrics[r] for r in runs]
        n = min(len(r) for r in rows)
        steps = np.array([row["env_steps"] for row in rows[0][:n]])
        panels = [("return", axes[0])] + ([("success", axes[1])] if has_success else [])
        for metric, ax in panels:
            for tag, style in (("pre", "--"), ("post", "-")):
                key = f"train/{metric}_{tag}"
                if key not in rows[0][0]:
                    continue
                values = np.array([[row[key] for row in r[:n]] for r in rows], dtype=float)
                mean, std = values.mean(0), values.std(0)
                line, = ax.plot(steps, mean, style, label=f"{label} ({tag}-adaptation, {len(runs)} run(s))")
                if len(runs) > 1:
                    ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())
        curves = [evals[r] for r in runs if r in evals]
        if curves:
            m = min(len(c["adaptation"]) for c in curves)
            xs = [row[x_key] for row in curves[0]["adaptation"][:m]]
            vals = np.array([[row["return_mean"] for row in c["adaptation"][:m]] for c in curves])
            unit = curves[0]["unit"].replace("_", " ")
            axes[-1].errorbar(xs, vals.mean(0), yerr=vals.std(0) if len(curves) > 1 else None, marker="o",
                              capsize=3, label=label if x_label is not None else f"{label} (k in {unit})")
    if has_eval:
        ax = axes[-1]
        ax.set_xlabel(x_label or "adaptation k (unit in the legend)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean return on held-out tasks")
        ax.set_title("adaptation curve (eval.json)")
    axes[0].set_ylabel("mean episode return")
    axes[0].set_title("training tasks")
    if has_success:
        axes[1].set_ylabel("success rate")
        axes[1].set_title("training tasks: success")
    for ax in axes[: 1 + has_success]:
        ax.set_xlabel("environment steps")
        format_steps_axis(ax)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_runs(run_dirs: list[Path], out: Path, by_run: bool = False) -> Path:
    """Learning curves of ``run_dirs`` (and their eval.json adaptation curves) to ``out``.

    Runs with the same config name and task distribution are averaged (mean and a band of
    one standard deviation); others get a line each. ``by_run``: every run its own line,
    labelled by its directory's name (its path where two names agree), for variants of one
    config side by side. Adaptation curves are drawn against the episodes of the held-out
    task seen where every eval.json row has ``episodes``
    (comparable across MAML's gradient steps and RL²'s episodes), else against k.
    """
    fig = draw_runs(run_dirs, by_run)
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
