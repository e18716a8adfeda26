"""Non-meta baselines with Stable-Baselines3, measured with metarl's evaluation.

- ``sb3_multitask``: one PPO or SAC policy trained across the train split (a task drawn
  per episode, the task hidden as for the meta-learners). Its evaluation fine-tunes it.
- ``sb3_finetune``: start from an ``sb3_multitask`` run's policy (``algo.init_from``) and
  fine-tune a copy on each test task; return after k = 0, E, 2E, ... fine-tuning episodes
  (E = ``episodes_per_task``), the same budgets MAML gets per gradient step.
- ``sb3_scratch``: the same budgets from a freshly initialised policy.

Checkpoints hold the SB3 policy's ``state_dict`` (loaded with ``weights_only``), never an
SB3 zip, whose loader unpickles code; optimiser state and SAC's replay buffer are not
saved, so a resumed ``sb3_multitask`` run restarts those.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.config import Sb3Config
from metarl.envs import Split, Task, TaskDistribution


class TaskEnv(gym.Env):
    """A task distribution's split as one gymnasium env (SB3 trains on it unchanged).

    Draws a task from ``split`` at every reset, or holds ``task`` when one is given. Envs are
    built once per :meth:`TaskDistribution.env_key` and re-tasked in place. At an episode's
    end, ``info["episode_success"]`` is 1.0 if ``info["success"]`` was ever true in it.
    """

    metadata = {"render_modes": []}

    def __init__(self, dist: TaskDistribution, split: Split = "train", task: Task | None = None,
                 seed: int = 0) -> None:
        self.dist, self.split, self.task = dist, split, task
        self.observation_space, self.action_space = dist.spaces
        self._rng = np.random.default_rng(seed)
        self._envs: dict[str, gym.Env] = {}
        self._env: gym.Env | None = None
        self._success = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task = self.task or self.dist.sample(1, self.split, self._rng)[0]
        key = self.dist.env_key(task)
        if key not in self._envs:
            self._envs[key] = self.dist.make_env(task)
        self._env = self._envs[key]
        self.dist.set_task(self._env, task)
        self._success = 0.0
        obs, info = self._env.reset(seed=int(self._rng.integers(2**31 - 1)))
        return obs.astype(self.observation_space.dtype), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._success = max(self._success, float(info.get("success", 0.0)))
        if terminated or truncated:
            info["episode_success"] = self._success
        return obs.astype(self.observation_space.dtype), float(reward), terminated, truncated, info

    def close(self) -> None:
        for env in self._envs.values():
            env.close()


def make_vec_env(dist: TaskDistribution, split: Split, n_envs: int, seed: int, task: Task | None = None):
    """An SB3 VecEnv of ``n_envs`` TaskEnvs (Monitor-wrapped, so SB3 logs episode returns)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda i=i: Monitor(TaskEnv(dist, split, task, seed + i),
                                            info_keywords=("episode_success",)) for i in range(n_envs)])


class Sb3Learner:
    """Wraps an SB3 model behind the learner interface the trainer and evaluator use."""

    unit = "episodes"

    def __init__(self, cfg: Sb3Config, dist: TaskDistribution, horizon: int, seed: int = 0,
                 device: str = "cpu") -> None:
        self.cfg, self.dist, self.horizon, self.seed, self.device = cfg, dist, horizon, seed, device
        self.model = self._new_model(make_vec_env(dist, "train", cfg.n_envs, seed), cfg.n_steps)
        if cfg.name == "sb3_finetune":
            self.model.policy.load_state_dict(load_multitask_policy(cfg.init_from))

    def _new_model(self, env, n_steps: int):
        from stable_baselines3 import PPO, SAC

        if self.cfg.sb3_algo == "ppo":
            rollout = n_steps * env.num_envs  # minibatches of at most 64 that divide the rollout
            batch = max(d for d in range(1, min(64, rollout) + 1) if rollout % d == 0)
            return PPO("MlpPolicy", env, n_steps=n_steps, batch_size=batch,
                       learning_rate=self.cfg.lr, seed=self.seed, device=self.device, verbose=0)
        return SAC("MlpPolicy", env, learning_rate=self.cfg.lr, seed=self.seed, device=self.device,
                   learning_starts=min(1000, n_steps), verbose=0)

    @property
    def trains(self) -> bool:
        return self.cfg.name == "sb3_multitask"

    def train_step(self, collect: Any = None) -> tuple[dict[str, float], int]:
        """``steps_per_iteration`` more SB3 timesteps across the train split."""
        before = self.model.num_timesteps
        self.model.learn(self.cfg.steps_per_iteration, reset_num_timesteps=False)
        infos = list(self.model.ep_info_buffer)
        ret = float(np.mean([i["r"] for i in infos])) if infos else float("nan")
        metrics = {"train/return_pre": ret, "train/return_post": ret}  # no adaptation in training
        if self.dist.name.startswith("ml") and infos:
            success = float(np.mean([i.get("episode_success", 0.0) for i in infos]))
            metrics |= {"train/success_pre": success, "train/success_post": success}
        return metrics, self.model.num_timesteps - before

    def adaptation_curve(self, tasks: list[Task], episodes: int, adapt_steps: int, seed: int,
                         max_steps: int | None = None) -> dict[str, Any]:
        """Fine-tune a copy of the policy (sb3_scratch: a fresh one) on each task; return and
        success after k = 0, E, ..., K*E episodes (E = ``episodes``)."""
        from stable_baselines3.common.evaluation import evaluate_policy

        budgets = [k * episodes for k in range(adapt_steps + 1)]
        per_task: dict[str, Any] = {}
        for i, task in enumerate(tasks):
            env = make_vec_env(self.dist, "test", 1, seed * 1000 + i, task=task)
            model = self._new_model(env, n_steps=episodes * self.horizon)
            if self.cfg.name != "sb3_scratch":
                model.policy.load_state_dict(copy.deepcopy(self.model.policy.state_dict()))
            returns, successes = [], []
            for k in range(adapt_steps + 1):
                if k:
                    model.learn(episodes * self.horizon, reset_num_timesteps=False)
                ended: list[float] = []

                def on_step(loc: dict, _globals: dict, ended: list[float] = ended) -> None:
                    if loc["done"] and "episode_success" in loc["info"]:
                        ended.append(loc["info"]["episode_success"])

                ep_returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=False,
                                                return_episode_rewards=True, callback=on_step)
                returns.append(float(np.mean(ep_returns)))
                successes.append(float(np.mean(ended)) if ended and self.dist.name.startswith("ml") else None)
            env.close()
            per_task[task.key()] = {"params": dict(task.params), "returns": returns, "success": successes}
        curve = []
        for k, budget in enumerate(budgets):
            values = np.array([row["returns"][k] for row in per_task.values()])
            success = [row["success"][k] for row in per_task.values() if row["success"][k] is not None]
            curve.append({"k": budget, "return_mean": float(values.mean()), "return_std": float(values.std()),
                          "success_rate": float(np.mean(success)) if success else None})
        return {"unit": "episodes", "adaptation": curve, "per_task": per_task}

    def state_dict(self) -> dict:
        return {"policy": {k: v.cpu() for k, v in self.model.policy.state_dict().items()},
                "num_timesteps": int(self.model.num_timesteps)}

    def load_state_dict(self, state: dict) -> None:
        self.model.policy.load_state_dict(state["policy"])
        self.model.num_timesteps = int(state["num_timesteps"])


def load_multitask_policy(run_dir: str | None) -> dict[str, torch.Tensor]:
    """The policy weights of an sb3_multitask run (for sb3_finetune)."""
    from metarl import checkpoint
    from metarl.config import ConfigError

    if not run_dir:
        raise ConfigError("sb3_finetune needs algo.init_from=<run dir of an sb3_multitask run>")
    state = checkpoint.load(Path(run_dir) / "checkpoints" / "latest.pt")
    if state["config"]["algo"]["name"] != "sb3_multitask":
        raise ConfigError(f"algo.init_from={run_dir} is a {state['config']['algo']['name']} run, "
                          "not sb3_multitask")
    return state["learner"]["policy"]
