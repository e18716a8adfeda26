"""Metric logging behind one small interface: JSONL always, W&B optionally."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log(self, metrics: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


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

        mode = "online" if wandb.api.api_key else "offline"
        self.run = wandb.init(dir=str(run_dir), config=config, project=project, entity=entity,
                              group=group, tags=tags, name=name, id=run_id, resume="allow", mode=mode)
        self.run.define_metric("env_steps")
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="env_steps")
        self.run_id = self.run.id

    def log(self, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics))

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log(self, metrics: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.log(metrics)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
