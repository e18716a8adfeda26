"""Metric logging behind one small interface: JSONL always, W&B optionally."""

from __future__ import annotations

import json
import math
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log(self, metrics: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; online with credentials (env var or netrc), offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        if netrc.netrc().authenticators(host):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


class JsonlLogger:
    """Appends one flat JSON object per call to ``path`` (flushed at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a")

    def log(self, metrics: Mapping[str, float]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class WandbLogger:
    """Weights & Biases: online when logged in, offline otherwise (``wandb sync`` later)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, entity: str | None,
                 group: str | None, tags: list[str], name: str | None, run_id: str | None) -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(dir=str(run_dir), config=config, project=project, entity=entity,
                              group=group, tags=tags, name=name, id=run_id, resume="allow",
                              mode=wandb_mode())
        # Both counters are logged with every row, so either can be the x-axis in the UI;
        # environment steps are the default.
        self.run.define_metric("env_steps")
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="env_steps")
        self.run_id = self.run.id

    def log(self, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics))

    def log_eval(self, result: Mapping[str, Any], env_steps: int) -> None:
        """The adaptation curve (a line plot over k) and a per-task table."""
        wandb = self._wandb
        rows = result["adaptation"]
        curve = wandb.Table(columns=["k", "episodes", "return_mean", "return_std", "success_rate"],
                            data=[[r["k"], r.get("episodes"), r["return_mean"], r["return_std"], r["success_rate"]]
                                  for r in rows])
        per_task = wandb.Table(columns=["task", "params", "k", "return", "success"])
        for key, row in result["per_task"].items():
            for r, ret, suc in zip(rows, row["returns"], row["success"], strict=True):
                per_task.add_data(key, json.dumps(row["params"]), r["k"], ret, suc)
        unit = result["unit"].replace("_", " ")
        self.run.log({"eval/adaptation_curve": wandb.plot.line(curve, "k", "return_mean",
                                                               title=f"return vs adaptation ({unit})"),
                      "eval/adaptation_table": curve, "eval/per_task": per_task, "env_steps": env_steps})

    def log_video(self, path: Path, env_steps: int) -> None:
        self.run.log({"video/adapted_rollout": self._wandb.Video(str(path), format="mp4"),
                      "env_steps": env_steps})

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    """Fans out to several loggers; ``log_eval``/``log_video`` reach those that have them."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log(self, metrics: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.log(metrics)

    def log_eval(self, result: Mapping[str, Any], env_steps: int) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_eval"):
                logger.log_eval(result, env_steps)

    def log_video(self, path: Path, env_steps: int) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_video"):
                logger.log_video(path, env_steps)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a process killed mid-write) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
