"""2D point navigation: the MAML paper's task (Finn et al., 2017, Sec. 5.2).

The agent starts at the origin and must reach a goal it does not observe. Settings follow
the paper and its reference code (cbfinn/maml_rl, ``point_env_rand_goal.py``): goal
uniform in [-0.5, 0.5]^2, displacements clipped to +-0.1, reward minus the Euclidean
distance to the goal after the step, episode ends (terminated) within 0.01 of the goal in
both coordinates, horizon 100. The policy acts in [-1, 1]^2, scaled to the +-0.1
displacement, as MAML's code does through rllab's ``normalize`` wrapper and VariBAD's and
oyster's point robots in their ``step``: a unit-std Gaussian policy then explores at 0.1
per step, where acting in displacement units it would be clipped nine times in ten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .core import Task, TaskDistribution, check_pool_sizes, draw_pools, find_wrapper


class PointNavigationEnv(gym.Env):
    """A point mass on the plane; observation is its position, action a displacement."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, goal: tuple[float, float] = (0.0, 0.0), max_step: float = 0.1,
                 render_mode: str | None = None, unit_actions: bool = True) -> None:
        """``unit_actions``: actions in [-1, 1]^2, times ``max_step``; false: displacements
        in [-max_step, max_step]^2 directly (metarl before 2026-12-06)."""
        self.max_step = max_step
        self.scale = max_step if unit_actions else 1.0
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.bound = 1.0 if unit_actions else max_step
        self.action_space = gym.spaces.Box(-self.bound, self.bound, shape=(2,), dtype=np.float32)
        self.goal = np.asarray(goal, dtype=np.float64)
        self._pos = np.zeros(2)

    def set_goal(self, goal: tuple[float, float]) -> None:
        self.goal = np.asarray(goal, dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._pos = np.zeros(2)
        return self._pos.astype(np.float32), {}

    def render(self) -> np.ndarray:
        """A 128x128 top view of [-1, 1]^2: the goal in red, the point in blue."""
        img = np.full((128, 128, 3), 255, dtype=np.uint8)
        for (x, y), color in ((self.goal, (220, 40, 40)), (self._pos, (40, 40, 220))):
            col, row = int((x + 1) / 2 * 127), int((1 - (y + 1) / 2) * 127)
            img[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4] = color
        return img

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -self.bound, self.bound)
        self._pos = self._pos + self.scale * action  # times 1.0 (displacement actions) is exact
        dx, dy = self._pos - self.goal
        reward = -float(np.sqrt(dx * dx + dy * dy))
        terminated = bool(abs(dx) < 0.01 and abs(dy) < 0.01)
        return self._pos.astype(np.float32), reward, terminated, False, {}


@dataclass(frozen=True)
class Navigation2D(TaskDistribution):
    """``nav2d``: goals uniform in ``[low, high]^2``, fixed pools per split.

    Args:
        low, high: Goal range (paper: -0.5, 0.5).
        horizon: Episode length (paper: 100).
        num_train_tasks, num_test_tasks: Sizes of the fixed, disjoint split pools.
        seed: Seed of the pools (not of training).
        unit_actions: Actions in [-1, 1]^2 scaled to the +-0.1 step (the references'); false
            for displacements directly, as runs made before 2026-12-06 acted.
    """

    low: float = -0.5
    high: float = 0.5
    horizon: int = 100
    num_train_tasks: int = 1000
    num_test_tasks: int = 100
    seed: int = 0
    unit_actions: bool = True
    name: str = "nav2d"

    def __post_init__(self) -> None:
        check_pool_sizes(self.num_train_tasks, self.num_test_tasks)
        if not self.low < self.high:
            raise ValueError(f"nav2d needs low < high, got low={self.low}, high={self.high}")

    def _make_pools(self) -> dict[str, list[Task]]:
        def draw(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
            goals = rng.uniform(self.low, self.high, size=(n, 2))
            return [{"goal": [float(g[0]), float(g[1])]} for g in goals]

        return draw_pools(draw, self.name, {"train": self.num_train_tasks,
                                            "test": self.num_test_tasks}, self.seed)

    def make_env(self, task: Task, render_mode: str | None = None) -> gym.Env:
        env = gym.wrappers.TimeLimit(PointNavigationEnv(render_mode=render_mode, unit_actions=self.unit_actions),
                                     max_episode_steps=self.horizon)
        self.set_task(env, task)
        return env

    def set_task(self, env: gym.Env, task: Task) -> None:
        find_wrapper(env, PointNavigationEnv).set_goal(tuple(task.params["goal"]))
