"""``metarl plot``: learning curves against env steps, and adaptation curves from eval.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from metarl.logging import read_jsonl


def steps_formatter() -> Any:
    """Tick labels for env-step axes: 200k, 1.5M, 20M."""
    from matplotlib.ticker import FuncFormatter

    def label(x: float, _pos: int) -> str:
        for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= scale:
                return f"{x / scale:g}{suffix}"
        return f"{x:g}"

    return FuncFormatter(label)


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Runs with the same config name and task distribution are averaged (mean and a band
    of one standard deviation); others get a line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[Path]] = defaultdict(list)
    for run in run_dirs:
        if not (run / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{run} has no metrics.jsonl")
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        groups[f"{cfg['algo']['name']} / {cfg['tasks']['name']}"].append(run)
    has_eval = any((r / "eval.json").is_file() for r in run_dirs)
    has_success = any("train/success_post" in read_jsonl(r / "metrics.jsonl")[0] for r in run_dirs)
    ncols = 1 + has_success + has_eval
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    axes = axes[0]
    for label, runs in groups.items():
        rows = [read_jsonl(r / "metrics.jsonl") for r in runs]
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
        if has_eval:
            ax = axes[-1]
            curves = [json.loads((r / "eval.json").read_text()) for r in runs if (r / "eval.json").is_file()]
            if curves:
                ks = [row["k"] for row in curves[0]["adaptation"]]
                vals = np.array([[row["return_mean"] for row in c["adaptation"]] for c in curves])
                unit = curves[0]["unit"].replace("_", " ")
                ax.errorbar(ks, vals.mean(0), yerr=vals.std(0) if len(curves) > 1 else None,
                            marker="o", capsize=3, label=f"{label} (k in {unit})")
                ax.set_xlabel("adaptation k (gradient steps or episodes, see legend)")
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
        ax.xaxis.set_major_formatter(steps_formatter())
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
