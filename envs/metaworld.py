"""Meta-World v3 meta-learning benchmarks: ML1 (each of the 50 envs), ML10, ML25, ML45.

The splits are the benchmark's own: ``metaworld.ML1/ML10/ML25/ML45(seed=...)`` decides
the train and test classes and draws each class's 50 goal vectors. metarl keeps only
plain data per task (the class name and its ``rand_vec``) and rebuilds Meta-World's
``Task`` in memory when an env is set to it. Goals are hidden (``partially_observable``),
as the ML benchmarks define; ``info["success"]`` is passed through unchanged.

Note: metaworld 3.1.1's own ML25 lists ``basketball-v3`` among both its train and its test
classes (with different goal vectors); ``ml25`` keeps the benchmark's split as it is.
"""

from __future__ import annotations

import functools
import logging
import pickle
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from .core import Task, TaskDistribution, as_float_list, check_count, check_split, find_wrapper

log = logging.getLogger(__name__)

BENCHMARKS = ("ml1", "ml10", "ml25", "ml45")
GOALS_PER_CLASS = 50  # metaworld._N_GOALS
HORIZON = 500  # SawyerXYZEnv.max_path_length


def ml1_env_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def split_classes(benchmark: str, env_name: str | None = None) -> dict[str, list[str]]:
    """The benchmark's train and test class names, read from metaworld's own tables."""
    from metaworld import env_dict

    if benchmark == "ml1":
        return {"train": [env_name], "test": [env_name]}
    table = {"ml10": env_dict.ML10_V3, "ml25": env_dict.ML25_V3, "ml45": env_dict.ML45_V3}[benchmark]
    return {"train": list(table["train"]), "test": list(table["test"])}


@dataclass(frozen=True)
class MetaWorld(TaskDistribution):
    """A Meta-World ML benchmark.

    Args:
        benchmark: ``ml1``, ``ml10``, ``ml25`` or ``ml45``.
        env_name: For ML1, the v3 environment (``pick-place-v3``, ...).
        seed: Seed passed to the benchmark constructor (it draws the goal vectors).
        fast: Use metarl's faster step path where one exists for the installed metaworld
            (bit-identical results); ``False`` uses the stock classes.
        reward_function_version: Meta-World's ``v2`` (default, the v3 envs' reward) or ``v1``.
        balanced: ML10, ML25, ML45: :meth:`sample` deals its tasks evenly over the split's
            classes, as Meta-World's own ML vector envs do (each env bound to one class, the
            meta-batch a multiple of the class count). ``False`` draws uniformly from all the
            split's goals, as runs saved before this option did. No effect on ML1.
    """

    benchmark: str = "ml1"
    env_name: str | None = "pick-place-v3"
    seed: int = 0
    fast: bool = True
    reward_function_version: str = "v2"
    balanced: bool = True
    horizon: int = HORIZON
    reports_success: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown Meta-World benchmark {self.benchmark!r}; valid: {', '.join(BENCHMARKS)}")
        if self.benchmark == "ml1" and self.env_name not in ml1_env_names():
            raise ValueError(f"unknown Meta-World environment {self.env_name!r}; valid: "
                             f"{', '.join(ml1_env_names())}")
        if not isinstance(self.balanced, bool):
            raise ValueError(f"balanced must be true or false, got {self.balanced!r}")
        if self.reward_function_version not in ("v1", "v2"):
            raise ValueError(f"reward_function_version must be 'v1' or 'v2', got {self.reward_function_version!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"ml1/{self.env_name}" if self.benchmark == "ml1" else self.benchmark

    def classes(self, split: str) -> list[str]:
        """Env class names of ``split``, exactly the benchmark's."""
        check_split(split)
        return split_classes(self.benchmark, self.env_name)[split]

    def split_size(self, split: str) -> int:
        return len(self.classes(split)) * GOALS_PER_CLASS

    def sample(self, n: int, split: str = "train",
               rng: np.random.Generator | None = None) -> list[Task]:
        """Draw ``n`` tasks from ``split``; with ``balanced`` and several classes, evenly over
        them: ``n // C`` goals of each of the C classes, one more for ``n % C`` classes drawn
        without replacement, each class's goals without replacement up to its 50 (with
        replacement beyond). The tasks come class by class, in the split's class order."""
        classes = self.classes(split)
        if not self.balanced or len(classes) == 1:
            return super().sample(n, split, rng)
        check_count(n)
        rng = np.random.default_rng(0) if rng is None else rng
        counts = np.full(len(classes), n // len(classes))
        counts[rng.choice(len(classes), size=n % len(classes), replace=False)] += 1
        by_class: dict[str, list[Task]] = {c: [] for c in classes}
        for task in self.tasks(split):
            by_class[task.params["env_name"]].append(task)
        tasks = []
        for name, count in zip(classes, counts, strict=True):
            pool = by_class[name]
            tasks += [pool[i] for i in rng.choice(len(pool), size=count, replace=count > len(pool))]
        return tasks

    def _make_pools(self) -> dict[str, list[Task]]:
        pools = _benchmark_pools(self.benchmark, self.env_name if self.benchmark == "ml1" else None, self.seed)
        return {split: list(tasks) for split, tasks in pools.items()}

    @property
    def spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Box]:  # type: ignore[override]
        """Every Sawyer env shares one (goal-hidden) observation and action space, so this
        needs no task pool (building ML45's takes tens of seconds)."""
        return _sawyer_spaces()

    def env_key(self, task: Task) -> str:
        return task.params["env_name"]

    def make_env(self, task: Task, render_mode: str | None = None) -> gym.Env:
        from .metaworld_fast import env_class

        cls = env_class(task.params["env_name"], fast=self.fast)
        env = cls(reward_function_version=self.reward_function_version, render_mode=render_mode,
                  camera_name="corner" if render_mode else None)
        env = gym.wrappers.TimeLimit(SeedOnReset(env), max_episode_steps=self.horizon)
        self.set_task(env, task)
        return env

    def set_task(self, env: gym.Env, task: Task) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        base = find_wrapper(env, ALL_V3_ENVIRONMENTS[task.params["env_name"]])
        base.set_task(metaworld_task(task))


@functools.cache
def _benchmark_pools(benchmark: str, env_name: str | None, seed: int) -> dict[str, tuple[Task, ...]]:
    """Meta-World's train and test tasks of a benchmark as metarl tasks, built once per
    process: the benchmark's constructor builds an env per class to draw its goals (ML45's
    takes tens of seconds), and a suite or a re-evaluation makes many distributions of it.
    The distributions share these tasks (not their lists): treat a task as read-only."""
    import metaworld

    if benchmark == "ml1":
        bench = metaworld.ML1(env_name, seed=seed)
    else:
        bench = getattr(metaworld, benchmark.upper())(seed=seed)
    name = f"ml1/{env_name}" if benchmark == "ml1" else benchmark
    return {split: tuple(Task(name, _plain_params(t), split, i) for i, t in enumerate(mw_tasks))
            for split, mw_tasks in (("train", bench.train_tasks), ("test", bench.test_tasks))}


@functools.cache
def _sawyer_spaces() -> tuple[gym.spaces.Box, gym.spaces.Box]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS["reach-v3"]()
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


class SeedOnReset(gym.Wrapper):
    """Passes ``reset(seed=...)`` to Meta-World's ``seed()`` (its ``reset`` ignores the seed),
    so seeded resets follow gymnasium's contract."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.env.unwrapped.seed(seed)
        return self.env.reset(options=options)


# The keys Meta-World's ML benchmarks put in every task's pickled kwargs after the env's
# own (``metaworld._make_tasks``: the goal, the class, then ``partially_observable=True``).
_TASK_KEYS = ("rand_vec", "env_cls", "partially_observable")


def _plain_params(mw_task: Any) -> dict[str, Any]:
    """Meta-World's pickled task kwargs -> JSON-able params (class name, goal vector)."""
    data = pickle.loads(mw_task.data)  # produced in this process by metaworld itself
    extra = {k: v for k, v in data.items() if k not in _TASK_KEYS}
    params: dict[str, Any] = {"env_name": mw_task.env_name, "rand_vec": as_float_list(data["rand_vec"])}
    if extra:
        params["kwargs"] = extra
    return params


def metaworld_task(task: Task) -> Any:
    """``task`` as the ``metaworld.Task`` of an ML benchmark it came from, byte for byte (the
    inverse of :func:`_plain_params` for those, whose tasks are all partially observable):
    Meta-World's ``set_task`` and its protocol's envs take the kwargs pickled. In-memory only."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.types import Task as MWTask

    values = (np.asarray(task.params["rand_vec"], dtype=np.float64),
              ALL_V3_ENVIRONMENTS[task.params["env_name"]], True)
    data = {**task.params.get("kwargs", {}), **dict(zip(_TASK_KEYS, values, strict=True))}
    return MWTask(env_name=task.params["env_name"], data=pickle.dumps(data))
