"""Adaptation to held-out tasks: return and success after k = 0..K adaptation steps.

One loop serves every learner (collect, record, adapt, repeat); eval.json, the periodic
evaluation during training and the CLI's ``metarl evaluate`` all come from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from metarl.algos.base import MetaLearner
from metarl.checkpoint import write_text
from metarl.envs import Task
from metarl.errors import ConfigError
from metarl.sampling import EpisodeBatch, Sampler
from metarl.seeding import Seeds


def check_eval_actions(learner: MetaLearner, deterministic: bool | None, adapt_steps: int) -> None:
    """Refuse to adapt a learner that takes policy-gradient steps (MAML's family) on
    episodes acted with the policy's mean: without exploration there is nothing to learn
    (for a state-independent std and centred advantages its gradient is exactly zero), so
    its curve would stay flat whatever it learned. Its k = 0 alone may act with the mean."""
    if deterministic and adapt_steps > 0 and learner.adaptation_unit == "gradient_steps":
        raise ConfigError("MAML's family adapts by policy-gradient steps on the episodes it acts in, which "
                          "with the policy's mean (eval.deterministic=true, --actions mean) hold no "
                          "exploration to learn from: sample them (eval.deterministic=false, --actions "
                          "sample), or evaluate k = 0 alone (eval.adapt_steps=0, --adapt-steps 0)")


def adaptation_curve(learner: MetaLearner, sampler: Sampler, tasks: list[Task], adapt_steps: int,
                     seed: int, max_steps: int | None = None, deterministic: bool | None = None) -> dict[str, Any]:
    """Return and success on ``tasks`` after k = 0..K adaptation steps (K = ``adapt_steps``).

    Round k rolls ``learner.adaptation_episodes`` episodes per task with what the learner
    acts with after k adaptation steps, records them, and adapts on them. Every episode of
    a task has its own seed (collection seed ``Seeds(seed).eval_collection()``, episode
    index = episodes of the task seen before it), so rounds never repeat an episode. The
    episodes act with the policy's mean if ``deterministic``, by default where
    ``learner.eval_deterministic`` says so.

    Returns ``{"unit", "deterministic", "adaptation": [{"k", "episodes", "return_mean",
    "return_std", "success_rate"}], "per_task": {key: {"params", "returns": [...], "success": [...]}}}``.
    ``k`` counts adaptation steps in the learner's unit (gradient steps, or episodes seen);
    ``episodes`` is how many episodes of each task the learner had seen at k.
    """
    unit, per_round = learner.adaptation_unit, learner.adaptation_episodes
    deterministic = learner.eval_deterministic if deterministic is None else deterministic
    check_eval_actions(learner, deterministic, adapt_steps)
    seeds = Seeds(seed)
    state = learner.init_adaptation(list(tasks), seeds.eval_collection())
    curve, per_task = [], {t.key(): {"params": dict(t.params), "returns": [], "success": []} for t in tasks}
    for k in range(adapt_steps + 1):
        seen = k * per_round
        batch = sampler.collect(tasks, learner.acting(state), per_round, seeds.eval_collection(), max_steps,
                                deterministic=deterministic, first_episode=seen)
        curve.append({"k": seen if unit == "episodes" else k, "episodes": seen, **summarize(batch)})
        returns = batch.episode_returns().mean(1)
        success = batch.episode_success()
        for i, task in enumerate(tasks):
            per_task[task.key()]["returns"].append(float(returns[i]))
            per_task[task.key()]["success"].append(None if success is None else float(success[i].mean()))
        if k < adapt_steps:
            state = learner.adapt(state, batch)
    return {"unit": unit, "deterministic": deterministic, "adaptation": curve, "per_task": per_task}


def summarize(batch: EpisodeBatch) -> dict[str, float | None]:
    """Mean and std of per-task mean returns, and the success rate (None without one)."""
    per_task = batch.episode_returns().mean(1).numpy()
    success = batch.episode_success()
    return {"return_mean": float(np.mean(per_task)), "return_std": float(np.std(per_task)),
            "success_rate": None if success is None else float(success.mean())}


def curve_metrics(result: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """``{prefix}/return_pre|post`` (and success): the curve's first and last rows."""
    rows = result["adaptation"]
    out = {}
    for tag, row in (("pre", rows[0]), ("post", rows[-1])):
        out[f"{prefix}/return_{tag}"] = row["return_mean"]
        if row["success_rate"] is not None:
            out[f"{prefix}/success_{tag}"] = row["success_rate"]
    return out


def eval_record(result: dict[str, Any], task_distribution: str, split: str) -> dict[str, Any]:
    """What eval.json holds: the distribution, the split and the result."""
    return {"task_distribution": task_distribution, "split": split, **result}


def write_eval(path: Path, result: dict[str, Any], task_distribution: str, split: str) -> Path:
    write_text(path, json.dumps(eval_record(result, task_distribution, split), indent=2))
    return path


def format_table(result: dict[str, Any]) -> str:
    unit = result["unit"].replace("_", " ")
    lines = [f"{'k (' + unit + ')':>22}  {'episodes seen':>13}  {'return':>18}  {'success':>8}"]
    for row in result["adaptation"]:
        success = "-" if row["success_rate"] is None else f"{row['success_rate']:.2f}"
        episodes = row.get("episodes", "")
        lines.append(f"{row['k']:>22}  {episodes:>13}  {row['return_mean']:>9.2f} ± {row['return_std']:<6.2f}  "
                     f"{success:>8}")
    return "\n".join(lines)
