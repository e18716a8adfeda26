"""The run directory's layout, in one place (the contract in DESIGN.md)::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/metrics.jsonl          one line per meta-iteration
    RUN_DIR/eval.json              the final evaluation (and Meta-World's protocol)
    RUN_DIR/eval_history.jsonl     periodic evaluations during training (eval.every)
    RUN_DIR/checkpoints/latest.pt  the latest checkpoint; iter_NNNNNN.pt the last few
    RUN_DIR/checkpoints/extra/     what only training needs, saved beside it (optimiser state,
                                   replay buffers)
    RUN_DIR/videos/iter_NNNNNN.mp4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_history(self) -> Path:
        return self.path / "eval_history.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    def iteration_checkpoint(self, iteration: int) -> Path:
        return self.checkpoints / f"iter_{iteration:06d}.pt"

    def iteration_checkpoints(self) -> list[Path]:
        """The ``iter_*.pt`` files, oldest first."""
        return sorted(self.checkpoints.glob("iter_*.pt"))

    @property
    def extra_state(self) -> Path:
        """Where the optimiser's state and a learner's large state (replay buffers) go, beside
        the checkpoint that names them (see ``Trainer.save``)."""
        return self.checkpoints / "extra"

    def video(self, iteration: int) -> Path:
        return self.path / "videos" / f"iter_{iteration:06d}.mp4"
