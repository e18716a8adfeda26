"""Adaptation to held-out tasks: return and success after k = 0..K adaptation steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from metarl.checkpoint import write_text
from metarl.envs import Task
from metarl.sampling import EpisodeBatch, Sampler


def adaptation_curve(learner: Any, sampler: Sampler, tasks: list[Task], episodes: int,
                     adapt_steps: int, seed: int, max_steps: int | None = None) -> dict[str, Any]:
    """Return and success on ``tasks`` after k = 0..K adaptation steps (K = ``adapt_steps``).

    Gradient-based learners (``unit == "gradient_steps"``): ``episodes`` per task before
    and after each of K gradient steps. In-context learners (RL², ``"episodes"``): one
    trial of K + 1 episodes per task; k is the episode's index in the trial.

    Returns ``{"unit", "adaptation": [{"k", "return_mean", "return_std", "success_rate"}],
    "per_task": {key: {"params", "returns": [...], "success": [...]}}}``.
    """
    if hasattr(learner, "adaptation_curve"):  # learners that adapt without our sampler (SB3)
        return learner.adaptation_curve(tasks, episodes, adapt_steps, seed, max_steps)
    if learner.unit == "episodes":
        return _trial_curve(learner, sampler, tasks, adapt_steps + 1, seed, max_steps)
    params = [learner.policy_params] * len(tasks)
    batches: list[EpisodeBatch] = []
    curve, per_task = [], {t.key(): {"params": dict(t.params), "returns": [], "success": []} for t in tasks}
    for k in range(adapt_steps + 1):
        batch = sampler.collect(tasks, params, episodes, seed=seed * 1000 + k, max_steps=max_steps)
        curve.append({"k": k, **summarize(batch)})
        returns = batch.episode_returns().mean(1)
        success = batch.episode_success()
        for i, task in enumerate(tasks):
            per_task[task.key()]["returns"].append(float(returns[i]))
            per_task[task.key()]["success"].append(None if success is None else float(success[i].mean()))
        if k < adapt_steps:
            batches.append(batch)
            params = learner.adapt(batches)
    return {"unit": "gradient_steps", "adaptation": curve, "per_task": per_task}


def _trial_curve(learner: Any, sampler: Sampler, tasks: list[Task], episodes: int, seed: int,
                 max_steps: int | None) -> dict[str, Any]:
    batch = sampler.collect(tasks, learner.policy_params, episodes, seed=seed * 1000, max_steps=max_steps)
    returns, success = batch.episode_returns(), batch.episode_success()
    per_task = {t.key(): {"params": dict(t.params), "returns": [float(r) for r in returns[i]],
                          "success": [None] * episodes if success is None else [float(s) for s in success[i]]}
                for i, t in enumerate(tasks)}
    curve = [{"k": k, "return_mean": float(returns[:, k].mean()), "return_std": float(returns[:, k].std(unbiased=False)),
              "success_rate": None if success is None else float(success[:, k].mean())} for k in range(episodes)]
    return {"unit": "episodes", "adaptation": curve, "per_task": per_task}


def summarize(batch: EpisodeBatch) -> dict[str, float | None]:
    """Mean and std of per-task mean returns, and the success rate (None without one)."""
    per_task = batch.episode_returns().mean(1).numpy()
    success = batch.episode_success()
    return {"return_mean": float(np.mean(per_task)), "return_std": float(np.std(per_task)),
            "success_rate": None if success is None else float(success.mean())}


def write_eval(run_dir: Path, result: dict[str, Any], task_distribution: str, split: str) -> Path:
    path = run_dir / "eval.json"
    data = {"task_distribution": task_distribution, "split": split, **result}
    write_text(path, json.dumps(data, indent=2))
    return path


def format_table(result: dict[str, Any]) -> str:
    unit = result["unit"].replace("_", " ")
    lines = [f"{'k (' + unit + ')':>22}  {'return':>18}  {'success':>8}"]
    for row in result["adaptation"]:
        success = "-" if row["success_rate"] is None else f"{row['success_rate']:.2f}"
        lines.append(f"{row['k']:>22}  {row['return_mean']:>9.2f} ± {row['return_std']:<6.2f}  {success:>8}")
    return "\n".join(lines)
