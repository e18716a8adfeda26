"""MuJoCo locomotion task families on gymnasium's v5 envs (MAML, ProMP and PEARL).

Each family keeps the gymnasium env's dynamics, observation, control and contact costs,
and replaces the forward-progress term with the task's term:

========================  ===================================  ==========================
family                    task parameter (range, source)       task reward term
========================  ===================================  ==========================
``halfcheetah-vel``       velocity ~ U[0, 2] m/s (MAML, 5.3);  ``-|v_x - v_goal|``
                          with ``max_velocity: 3``, U[0, 3]
                          (oyster, ProMP, VariBAD)
``halfcheetah-dir``       direction in {-1, +1} (MAML, 5.3)    ``direction * v_x``
``ant-dir``               heading ~ U[0, 2 pi) (ProMP,         ``v_xy . (cos, sin)``
                          ``AntRandDirec2DEnv``); with
                          ``forward_backward``, 0 or pi (MAML,
                          VariBAD's ``AntDir``, oyster)
``ant-goal``              goal uniform in the disk of radius   ``-||xy - goal||_1``
                          3 (PEARL, ``ant_goal.py``)
========================  ===================================  ==========================

Horizon 200 for all, as in MAML (Sec. 5.3) and PEARL's locomotion configs, on gymnasium
v5's 0.05 s steps (frame skip 5), as ProMP's, oyster's and VariBAD's envs; MAML's rllab
cheetah stepped 0.01 s, so its 200 steps are a fifth of the time. The cheetahs
add the rllab control cost ``0.05 * ||a||^2`` (MAML's reference code). ``ant-dir`` keeps
gymnasium's control (0.5), contact (5e-4) and healthy (+1) terms and terminates when
unhealthy, as oyster's and VariBAD's ant-dir. ``ant-goal`` takes the terms of oyster's and
VariBAD's ``ant_goal.py`` and ProMP's ``ant_rand_goal.py``: control cost 0.1, contact 5e-4, no healthy reward and no
termination (with a +1 per healthy step and termination, a negative goal term makes falling
over the best policy), and observes its position and clipped contact forces, as they do.

``halfcheetah-dir`` (and ``ant-dir`` with ``forward_backward``) has only two tasks; as in
the papers its test split is those same two tasks (there is nothing else to hold out), so
these are the families whose splits overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .core import Task, TaskDistribution, check_pool_sizes, draw_pools, find_wrapper


class LocomotionTaskWrapper(gym.Wrapper):
    """Replaces a gymnasium MuJoCo env's reward with a task's reward.

    The original reward terms stay in ``info``; ``info["task_reward"]`` holds the task term.
    """

    def __init__(self, env: gym.Env, family: str, params: dict[str, Any]) -> None:
        super().__init__(env)
        self.family = family
        self.params = dict(params)

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        p = self.params
        if self.family == "halfcheetah-vel":
            task_reward = -abs(info["x_velocity"] - p["velocity"])
            reward = task_reward - 0.05 * float(np.sum(np.square(action)))
        elif self.family == "halfcheetah-dir":
            task_reward = p["direction"] * info["x_velocity"]
            reward = task_reward - 0.05 * float(np.sum(np.square(action)))
        elif self.family == "ant-dir":
            a = p["angle"]
            task_reward = info["x_velocity"] * np.cos(a) + info["y_velocity"] * np.sin(a)
            reward = task_reward + info["reward_ctrl"] + info["reward_contact"] + info["reward_survive"]
        else:  # ant-goal
            gx, gy = p["goal"]
            task_reward = -(abs(info["x_position"] - gx) + abs(info["y_position"] - gy))
            reward = task_reward + info["reward_ctrl"] + info["reward_contact"] + info["reward_survive"]
        info["task_reward"] = float(task_reward)
        return obs, float(reward), terminated, truncated, info


_ENV_IDS = {"halfcheetah-vel": "HalfCheetah-v5", "halfcheetah-dir": "HalfCheetah-v5",
            "ant-dir": "Ant-v5", "ant-goal": "Ant-v5"}


def _env_class(env_id: str) -> type:
    if env_id == "Ant-v5":
        from gymnasium.envs.mujoco.ant_v5 import AntEnv

        return AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    return HalfCheetahEnv


@dataclass(frozen=True)
class Locomotion(TaskDistribution):
    """One of the four locomotion families (``name`` picks it; see the module docstring)."""

    name: str = "halfcheetah-vel"
    horizon: int = 200
    num_train_tasks: int = 100
    num_test_tasks: int = 30
    seed: int = 0
    forward_backward: bool = False
    """``ant-dir`` only: the two headings 0 and pi instead of U[0, 2 pi)."""
    max_velocity: float = 2.0
    """``halfcheetah-vel`` only: target velocities ~ U[0, max_velocity] m/s; 2 is MAML's
    range, 3 oyster's, ProMP's and VariBAD's (their cheetahs' ``sample_tasks``)."""

    def __post_init__(self) -> None:
        if self.name not in _ENV_IDS:
            raise ValueError(f"unknown locomotion family {self.name!r}; valid: {', '.join(_ENV_IDS)}")
        if self.forward_backward and self.name != "ant-dir":
            raise ValueError(f"forward_backward is an ant-dir option, not {self.name}'s")
        if self.max_velocity != 2.0 and self.name != "halfcheetah-vel":
            raise ValueError(f"max_velocity is a halfcheetah-vel option, not {self.name}'s")
        if not self.max_velocity > 0:
            raise ValueError(f"max_velocity must be > 0 m/s, got {self.max_velocity}")
        check_pool_sizes(self.num_train_tasks, self.num_test_tasks)

    def _make_pools(self) -> dict[str, list[Task]]:
        if self.name == "halfcheetah-dir" or self.forward_backward:
            key, values = ("direction", [-1.0, 1.0]) if self.name == "halfcheetah-dir" else ("angle", [np.pi, 0.0])
            return {s: [Task(self.name, {key: v}, s, i) for i, v in enumerate(values)]
                    for s in ("train", "test")}
        sizes = {"train": self.num_train_tasks, "test": self.num_test_tasks}
        return draw_pools(self._draw, self.name, sizes, self.seed)

    def _draw(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        if self.name == "halfcheetah-vel":
            return [{"velocity": float(v)} for v in rng.uniform(0.0, self.max_velocity, size=n)]
        if self.name == "ant-dir":
            return [{"angle": float(a)} for a in rng.uniform(0.0, 2 * np.pi, size=n)]
        angle = rng.uniform(0.0, 2 * np.pi, size=n)
        radius = 3.0 * np.sqrt(rng.uniform(0.0, 1.0, size=n))
        return [{"goal": [float(r * np.cos(a)), float(r * np.sin(a))]}
                for a, r in zip(angle, radius, strict=True)]

    def make_env(self, task: Task, render_mode: str | None = None) -> gym.Env:
        kwargs: dict[str, Any] = {"render_mode": render_mode}
        if self.name == "ant-dir":
            kwargs["include_cfrc_ext_in_observation"] = False
        if self.name == "ant-goal":  # oyster's ant_goal.py; the goal is a position: the agent sees its own
            kwargs |= {"ctrl_cost_weight": 0.1, "healthy_reward": 0.0, "terminate_when_unhealthy": False,
                       "exclude_current_positions_from_observation": False}
        env = _env_class(_ENV_IDS[self.name])(**kwargs)
        env = LocomotionTaskWrapper(env, self.name, task.params)
        return gym.wrappers.TimeLimit(env, max_episode_steps=self.horizon)

    def set_task(self, env: gym.Env, task: Task) -> None:
        find_wrapper(env, LocomotionTaskWrapper).params = dict(task.params)
