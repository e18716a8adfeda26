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
    def close(self, failed: bool = False) -> None: ...


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
    """Appends one flat JSON object per call to ``path`` (flushed at once). The file is
    opened at the first row, so a run that fails before one leaves none."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def log(self, metrics: Mapping[str, float]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self, failed: bool = False) -> None:
        if self._file is not None:
            self._file.close()


class WandbLogger:
    """Weights & Biases: online when logged in, offline otherwise (``wandb sync`` later).

    A resume redoes the iterations after its checkpoint bit for bit, and W&B keeps what it
    was sent before the stop: so the env steps of the last row, evaluation and video sent
    are kept in ``wandb/metarl_sent.json`` (rewritten after each), and a resumed run sends
    none of them again, through any number of interrupted resumes.
    """

    SENT = "metarl_sent.json"

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, entity: str | None,
                 group: str | None, tags: list[str], name: str | None, run_id: str | None) -> None:
        import wandb

        from metarl.errors import ConfigError

        self._wandb = wandb
        self._sent_path = Path(run_dir) / "wandb" / self.SENT
        self.sent: dict[str, int] = json.loads(self._sent_path.read_text()) if self._sent_path.is_file() else {}
        try:
            self.run = wandb.init(dir=str(run_dir), config=config, project=project, entity=entity,
                                  group=group, tags=tags, name=name, id=run_id, resume="allow",
                                  mode=wandb_mode())
        except (wandb.errors.Error, ValueError) as err:  # its settings (WANDB_MODE, a key): the user's to fix
            # A settings error reads "1 validation error for Settings / mode / Input should be ...".
            lines = [line.strip() for line in str(err).splitlines() if line.strip()][:3] or [type(err).__name__]
            if "validation error" in lines[0] and len(lines) > 1:
                lines = lines[1:]
            raise ConfigError(f"W&B did not start ({': '.join(lines)}); fix its settings "
                              "(WANDB_* environment variables) or run with logger.wandb=false") from None
        # Both counters are logged with every row, so either can be the x-axis in the UI;
        # environment steps are the default.
        self.run.define_metric("env_steps")
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="env_steps")
        self.run_id = self.run.id

    def _new(self, kind: str, env_steps: int) -> bool:
        """Whether W&B has yet to get this ``kind`` (row, eval, video) at ``env_steps``."""
        return env_steps > self.sent.get(kind, -1)

    def _sent(self, kind: str, env_steps: int) -> None:
        from metarl.checkpoint import write_text

        self.sent[kind] = env_steps
        write_text(self._sent_path, json.dumps(self.sent))

    def log(self, metrics: Mapping[str, float]) -> None:
        if self._new("row", metrics["env_steps"]):
            self.run.log(dict(metrics))
            self._sent("row", metrics["env_steps"])

    def log_eval(self, result: Mapping[str, Any], env_steps: int) -> None:
        """The adaptation curve (a line plot over k) and a per-task table."""
        if not self._new("eval", env_steps):
            return
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
        self._sent("eval", env_steps)

    def log_video(self, path: Path, env_steps: int) -> None:
        if self._new("video", env_steps):
            self.run.log({"video/adapted_rollout": self._wandb.Video(str(path), format="mp4"),
                          "env_steps": env_steps})
            self._sent("video", env_steps)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)  # a crashed or interrupted run is not "finished"


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

    def close(self, failed: bool = False) -> None:
        """``failed``: the run stopped on an exception or an interrupt."""
        for logger in self.loggers:
            logger.close(failed)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a process killed mid-write) is skipped, a
    damaged line before it is a CheckpointError (the file is not what the run wrote)."""
    from metarl.checkpoint import CheckpointError

    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise CheckpointError(f"{path}, line {number}, is not JSON ({err.msg}); only a torn last "
                                      "line is skipped: repair or remove it") from None
    return rows
