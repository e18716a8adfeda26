"""EpisodeBatch: episodes of several tasks as padded tensors with a validity mask."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from metarl.envs import Task


@dataclass
class EpisodeBatch:
    """Episodes of N tasks, E episodes each, padded to T steps.

    Shapes (N tasks, E episodes per task, T steps, O obs dim, A action dim):

    - ``obs`` (N, E, T, O), ``actions`` (N, E, T, A): ``actions`` are the policy's samples
      (before clipping to the action space, so ``log_probs`` match them).
    - ``rewards``, ``log_probs`` (N, E, T) float32.
    - ``terminated``, ``truncated`` (N, E, T) bool: true at an episode's last step when it
      ended by the env's termination or by the time limit.
    - ``mask`` (N, E, T) bool: true on real steps, false on padding.
    - ``last_obs`` (N, E, O): the observation after each episode's last step (bootstrap).
    - ``success`` (N, E, T) float32 or None: ``info["success"]`` where the env reports it.
    - ``tasks``: the N tasks.
    - ``carry``: recurrent policies only, each task's trial state after its last episode
      (tensors (N, ...) keyed by ``h``, ``prev_action``, ``prev_reward``), else None.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    log_probs: Tensor
    terminated: Tensor
    truncated: Tensor
    mask: Tensor
    last_obs: Tensor
    success: Tensor | None
    tasks: list[Task]
    carry: dict[str, Tensor] | None = None

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(N, E) episode lengths."""
        return self.mask.sum(-1)

    @property
    def env_steps(self) -> int:
        return int(self.mask.sum())

    def episode_returns(self) -> Tensor:
        """(N, E) undiscounted returns."""
        return (self.rewards * self.mask).sum(-1)

    def episode_success(self) -> Tensor | None:
        """(N, E) 1.0 where the episode succeeded at any step (Meta-World's criterion)."""
        if self.success is None:
            return None
        return ((self.success * self.mask).amax(-1) > 0).float()

    def to(self, device: torch.device | str) -> EpisodeBatch:
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True)
                 for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)

    def select(self, index: int) -> EpisodeBatch:
        """Task ``index`` alone, keeping the leading task dim (1, E, T, ...)."""
        picked = {f.name: getattr(self, f.name)[index:index + 1]
                  for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        carry = None if self.carry is None else {k: v[index:index + 1] for k, v in self.carry.items()}
        return replace(self, **picked, tasks=[self.tasks[index]], carry=carry)
