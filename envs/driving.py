"""Driving-like task families.

``car-goal`` and ``car-speed`` run metarl's own differential-drive car (``assets/car.xml``)
on MuJoCo. Every task varies the road friction (U[0.1, 1.0]) and the chassis mass
(U[0.5, 2.0] kg, inertia scaled with it), plus a hidden target:

- ``car-goal``: drive to a goal uniform in the disk of radius 2 m; reward
  ``-||xy - goal|| - 0.01 ||a||^2``; success within 0.1 m.
- ``car-speed``: hold a forward speed U[0.2, 1.5] m/s; reward ``-|v - target| - 0.01 ||a||^2``;
  success within 0.05 m/s.

Observation (9): x, y, cos yaw, sin yaw, forward and lateral speed, yaw rate, the two wheel
speeds. Action (2): throttle and turn, in [-1, 1]. 0.05 s per step, horizon 200 (10 s).

``highway-parking`` is highway-env's ``parking-v0`` with the goal spot (one of 28) as the
hidden task parameter; the observation is the ego vehicle's kinematics only. It needs the
``highway`` extra (``pip install metarl[highway]``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv

from .core import Task, TaskDistribution, check_pool_sizes, draw_pools, find_wrapper

CAR_XML = Path(__file__).with_name("assets") / "car.xml"


class CarEnv(MujocoEnv):
    """The car on a flat road; ``params`` hold friction, mass and the goal or target speed."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}

    def __init__(self, mode: str, params: dict[str, Any], render_mode: str | None = None,
                 width: int = 480, height: int = 480) -> None:
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(9,), dtype=np.float64)
        super().__init__(str(CAR_XML), frame_skip=5, observation_space=obs_space,
                         render_mode=render_mode, width=width, height=height,
                         camera_name="chase" if render_mode else None)
        self.mode = mode
        self._floor = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        self._car = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "car")
        self._goal_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        self._mass0 = float(self.model.body_mass[self._car])
        self._inertia0 = self.model.body_inertia[self._car].copy()
        self.set_params(params)

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = dict(params)
        self.model.geom_friction[self._floor, 0] = params["friction"]
        self.model.body_mass[self._car] = params["mass"]
        self.model.body_inertia[self._car] = self._inertia0 * (params["mass"] / self._mass0)
        if self.mode == "goal":
            self.model.site_pos[self._goal_site, :2] = params["goal"]

    def _state(self) -> tuple[float, float, float, float, float]:
        qw, qx, qy, qz = self.data.qpos[3:7]
        yaw = np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
        c, s = np.cos(yaw), np.sin(yaw)
        vx, vy = self.data.qvel[0], self.data.qvel[1]
        return c, s, c * vx + s * vy, -s * vx + c * vy, self.data.qvel[5]

    def _get_obs(self) -> np.ndarray:
        c, s, v_fwd, v_lat, yaw_rate = self._state()
        x, y = self.data.qpos[0], self.data.qpos[1]
        return np.array([x, y, c, s, v_fwd, v_lat, yaw_rate, self.data.qvel[6], self.data.qvel[7]])

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.do_simulation(action, self.frame_skip)
        obs = self._get_obs()
        ctrl_cost = 0.01 * float(np.sum(action * action))
        if self.mode == "goal":
            error = float(np.linalg.norm(obs[:2] - np.asarray(self.params["goal"])))
            success = error < 0.1
        else:
            error = abs(float(obs[4]) - self.params["speed"])
            success = error < 0.05
        if self.render_mode == "human":
            self.render()
        return obs, -error - ctrl_cost, False, False, {"success": float(success), "error": error}

    def reset_model(self) -> np.ndarray:
        self.set_state(self.init_qpos, self.init_qvel)
        return self._get_obs()


@dataclass(frozen=True)
class CarTasks(TaskDistribution):
    """``car-goal`` or ``car-speed`` (``name`` picks it; see the module docstring)."""

    name: str = "car-goal"
    horizon: int = 200
    num_train_tasks: int = 100
    num_test_tasks: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ("car-goal", "car-speed"):
            raise ValueError(f"unknown car family {self.name!r}; valid: car-goal, car-speed")
        check_pool_sizes(self.num_train_tasks, self.num_test_tasks)

    def _make_pools(self) -> dict[str, list[Task]]:
        def draw(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
            out = []
            for _ in range(n):
                p: dict[str, Any] = {"friction": float(rng.uniform(0.1, 1.0)),
                                     "mass": float(rng.uniform(0.5, 2.0))}
                if self.name == "car-goal":
                    a, r = rng.uniform(0, 2 * np.pi), 2.0 * np.sqrt(rng.uniform())
                    p["goal"] = [float(r * np.cos(a)), float(r * np.sin(a))]
                else:
                    p["speed"] = float(rng.uniform(0.2, 1.5))
                out.append(p)
            return out

        sizes = {"train": self.num_train_tasks, "test": self.num_test_tasks}
        return draw_pools(draw, self.name, sizes, self.seed)

    def make_env(self, task: Task, render_mode: str | None = None) -> gym.Env:
        env = CarEnv(self.name.removeprefix("car-"), task.params, render_mode=render_mode)
        return gym.wrappers.TimeLimit(env, max_episode_steps=self.horizon)

    def set_task(self, env: gym.Env, task: Task) -> None:
        find_wrapper(env, CarEnv).set_params(task.params)


PARKING_SPOTS = 28  # highway-env's parking lot: 14 spots on each side


@functools.cache
def _parking_env_class() -> type:
    from metarl.extras import require

    ParkingEnv = require("highway_env.envs.parking_env", "highway", "highway-parking").ParkingEnv

    class HiddenGoalParkingEnv(ParkingEnv):
        """parking-v0 with a fixed goal spot and the goal removed from the observation."""

        spot: int = 0

        def _create_vehicles(self) -> None:
            super()._create_vehicles()
            lanes = list(self.road.network.lanes_dict().keys())
            lane = self.road.network.get_lane(lanes[self.spot])
            goal = self.controlled_vehicles[0].goal
            goal.position = lane.position(lane.length / 2, 0)
            goal.heading = lane.heading

    return HiddenGoalParkingEnv


class _KinematicsOnly(gym.ObservationWrapper):
    """Keeps the ``observation`` entry of the goal-env dict (the goal stays hidden) and
    reports highway-env's ``is_success`` as ``success``, like every other family."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = env.observation_space["observation"]

    def observation(self, observation):
        return observation["observation"]

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["success"] = float(info.get("is_success", False))
        return obs, reward, terminated, truncated, info


@dataclass(frozen=True)
class HighwayParking(TaskDistribution):
    """``highway-parking``: 28 goal spots; every fourth spot is held out for testing."""

    name: str = "highway-parking"
    horizon: int = 100  # 20 s at highway-env's 5 Hz policy frequency

    def _make_pools(self) -> dict[str, list[Task]]:
        test = [s for s in range(PARKING_SPOTS) if s % 4 == 3]
        train = [s for s in range(PARKING_SPOTS) if s % 4 != 3]
        return {split: [Task(self.name, {"spot": s}, split, i) for i, s in enumerate(spots)]
                for split, spots in (("train", train), ("test", test))}

    def make_env(self, task: Task, render_mode: str | None = None) -> gym.Env:
        cls = _parking_env_class()
        env = cls(config={"duration": self.horizon / 5, "add_walls": True}, render_mode=render_mode)
        env.spot = int(task.params["spot"])
        return gym.wrappers.TimeLimit(_KinematicsOnly(env), max_episode_steps=self.horizon)

    def set_task(self, env: gym.Env, task: Task) -> None:
        find_wrapper(env, _parking_env_class()).spot = int(task.params["spot"])
