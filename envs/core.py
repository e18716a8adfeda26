"""Tasks, task distributions and the pieces every family shares.

A :class:`Task` is plain data (family name plus JSON-serialisable parameters). A
:class:`TaskDistribution` knows its train/test splits, samples tasks with an explicit
``numpy.random.Generator``, builds a gymnasium env for one task and re-tasks an env it
built, so samplers can keep their envs alive across collections.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class Task:
    """One task of a family: plain, hashable-by-content data that round-trips through JSON.

    Attributes:
        family: The task distribution's name (``"nav2d"``, ``"ml1/pick-place-v3"``, ...).
        params: The task's parameters (goal, velocity, benchmark class and goal vector, ...).
            Values are floats, ints, strings or lists of those.
        split: The split the task was drawn from.
        index: Position of the task in its split's pool, or -1 for freshly drawn tasks.
    """

    family: str
    params: Mapping[str, Any] = field(default_factory=dict)
    split: str = "train"
    index: int = -1

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "params": dict(self.params), "split": self.split,
                "index": self.index}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        return cls(family=data["family"], params=dict(data["params"]),
                   split=data.get("split", "train"), index=int(data.get("index", -1)))

    def key(self) -> str:
        """A stable string identifying the task (used in per-task result tables)."""
        return f"{self.split}/{self.index}" if self.index >= 0 else json.dumps(
            self.params, sort_keys=True)


class TaskDistribution(ABC):
    """A family of tasks with disjoint train and test splits.

    Subclasses set ``name`` and ``horizon`` and implement :meth:`_make_pools` (the finite
    task pool of each split), :meth:`make_env` and :meth:`set_task`.
    """

    name: str
    horizon: int
    """Episode length limit (the env is wrapped in a ``TimeLimit`` of this many steps)."""
    reports_success: ClassVar[bool] = False
    """Whether the envs report ``info["success"]`` (Meta-World): success rates are measured."""

    def sample(self, n: int, split: Split = "train",
               rng: np.random.Generator | None = None) -> list[Task]:
        """Draw ``n`` tasks from ``split``.

        Without replacement while ``n`` does not exceed the split's size, with replacement
        beyond. ``rng`` defaults to ``np.random.default_rng(0)`` so a call without one is
        still deterministic (never the global numpy state).
        """
        check_count(n)
        pool = self.tasks(split)
        rng = np.random.default_rng(0) if rng is None else rng
        idx = rng.choice(len(pool), size=n, replace=n > len(pool))
        return [pool[i] for i in idx]

    def tasks(self, split: Split) -> list[Task]:
        """Every task of ``split``, in a fixed order."""
        check_split(split)
        return self._pools[split]

    def split_size(self, split: Split) -> int:
        check_split(split)
        return len(self.tasks(split))

    @cached_property
    def _pools(self) -> dict[str, list[Task]]:
        return self._make_pools()

    @abstractmethod
    def _make_pools(self) -> dict[str, list[Task]]:
        """Every split's tasks: ``{"train": [...], "test": [...]}`` (computed once)."""

    @abstractmethod
    def make_env(self, task: Task, render_mode: str | None = None) -> gym.Env:
        """A new gymnasium env (with a ``TimeLimit`` of ``horizon``) set to ``task``.

        ``render_mode="rgb_array"`` asks for frames (MuJoCo families need a GL backend,
        chosen with ``MUJOCO_GL``: egl or osmesa on a machine without a screen)."""

    @abstractmethod
    def set_task(self, env: gym.Env, task: Task) -> None:
        """Re-task an env this distribution built, in place (cheaper than a new env).

        Only valid for an env built for a task with the same :meth:`env_key`.
        """

    def env_key(self, task: Task) -> str:
        """Tasks with equal keys can share one env through :meth:`set_task`."""
        return ""

    @cached_property
    def spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """(observation_space, action_space), read off an env of the first train task."""
        env = self.make_env(self.tasks("train")[0])
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    @property
    def observation_space(self) -> gym.spaces.Box:
        return self.spaces[0]

    @property
    def action_space(self) -> gym.spaces.Box:
        return self.spaces[1]

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the distribution, not its cached pools (ML45's are large).
        return {k: v for k, v in self.__dict__.items() if k not in ("_pools", "spaces")}

    def describe(self) -> dict[str, Any]:
        """Name, split sizes, dims and horizon (what ``metarl tasks`` prints)."""
        obs, act = self.spaces
        return {"name": self.name, "train": self.split_size("train"),
                "test": self.split_size("test"), "obs_dim": int(np.prod(obs.shape)),
                "act_dim": int(np.prod(act.shape)), "horizon": self.horizon}


def check_count(n: Any) -> None:
    """The number of tasks to draw: a positive integer."""
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def draw_pools(draw, family: str, sizes: Mapping[str, int], seed: int) -> dict[str, list[Task]]:
    """Fixed train/test pools for a continuous family.

    ``draw(rng, n)`` returns ``n`` parameter dicts drawn from the family's range. Each
    split gets its own stream of ``numpy.random.SeedSequence(seed)``, so the pools do not
    depend on each other's size; a test task equal to a train task is redrawn, so the
    splits are disjoint by construction.
    """
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    train = draw(np.random.default_rng(train_seq), sizes["train"])
    seen = {json.dumps(p, sort_keys=True) for p in train}
    rng = np.random.default_rng(test_seq)
    test: list[dict[str, Any]] = []
    while len(test) < sizes["test"]:
        for p in draw(rng, sizes["test"] - len(test)):
            if json.dumps(p, sort_keys=True) not in seen:
                test.append(p)
    return {split: [Task(family, p, split, i) for i, p in enumerate(params)]
            for split, params in (("train", train), ("test", test))}


def check_pool_sizes(num_train_tasks: int, num_test_tasks: int) -> dict[str, int]:
    for key, value in (("num_train_tasks", num_train_tasks), ("num_test_tasks", num_test_tasks)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return {"train": num_train_tasks, "test": num_test_tasks}


def find_wrapper(env: gym.Env, cls: type) -> Any:
    """The first wrapper (or the base env) of type ``cls`` in ``env``'s wrapper chain."""
    while True:
        if isinstance(env, cls):
            return env
        if not isinstance(env, gym.Wrapper):
            raise TypeError(f"{cls.__name__} not found in the env's wrapper chain")
        env = env.env


def as_float_list(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]
