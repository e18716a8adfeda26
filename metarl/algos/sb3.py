"""Non-meta baselines with Stable-Baselines3, measured with metarl's evaluation.

- ``sb3_multitask``: one PPO or SAC policy trained across the train split (a task drawn
  per episode, the task hidden as for the meta-learners). Its evaluation fine-tunes it.
- ``sb3_finetune``: start from an ``sb3_multitask`` run's policy (``algo.init_from``) and
  fine-tune a copy on each test task; return after k = 0, E, 2E, ... fine-tuning episodes
  (E = ``episodes_per_task``), the same budgets MAML gets per gradient step.
- ``sb3_scratch``: the same budgets from a freshly initialised policy.

Adaptation is SB3's own ``learn`` on each held-out task's env; what it achieves is measured
like every learner's: metarl's sampler rolls the SB3 policy's weights, translated onto
metarl's Gaussian MLP (PPO's policy as it is; SAC's with a state-dependent std and tanh
squashing), with the same episode seeds and success criterion as the meta-learners.

Checkpoints hold the SB3 policy's ``state_dict`` (and SAC's entropy coefficient), loaded
with ``weights_only``, never an SB3 zip, whose loader unpickles code; optimiser state and
SAC's replay buffer are not saved, so ``sb3_multitask`` runs do not resume (the trainer
refuses ``resume=true``); their checkpoints evaluate and seed ``sb3_finetune``.

The hyper-parameters are SB3's defaults (PPO: 2048-step rollouts over the envs, minibatches
of 64, 10 epochs, gamma 0.99, GAE lambda 0.95, clip 0.2, a 2x64 tanh MLP; SAC: 2x256 ReLU,
learned entropy coefficient, one gradient step per transition), without rl-baselines3-zoo's
per-environment tuning or its observation and reward normalisation. SB3 draws from the
global random generators and its ``seed=`` resets them: held-out fine-tuning runs on a
stream of its own (kept in the adaptation state), so evaluating leaves training's as it was.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.algos.base import (
    AlgoConfig,
    LearnerSetup,
    NoExtraState,
    TrainContext,
    check_positive,
    register,
)
from metarl.envs import Split, Task, TaskDistribution
from metarl.errors import ConfigError
from metarl.policies import Params, PolicySpec
from metarl.policies.acting import Acting
from metarl.sampling import EpisodeBatch


@dataclass(frozen=True)
class Sb3Config(AlgoConfig):
    """Stable-Baselines3 baselines: ``sb3_multitask``, ``sb3_finetune``, ``sb3_scratch``."""

    name: str = "sb3_multitask"
    sb3_algo: str = "ppo"
    """``ppo`` or ``sac``."""
    lr: float = 3e-4
    n_envs: int = 4
    """Envs of the multi-task VecEnv (each draws a train task per episode)."""
    n_steps: int = 512
    """PPO rollout length per env for multi-task training."""
    steps_per_iteration: int = 10_000
    """SB3 timesteps per metarl iteration (one metrics.jsonl line each)."""
    init_from: str | None = None
    """sb3_finetune: the run directory of an sb3_multitask run."""

    def __post_init__(self) -> None:
        if self.sb3_algo not in ("ppo", "sac"):
            raise ConfigError(f"algo.sb3_algo must be 'ppo' or 'sac', got {self.sb3_algo!r}")
        for key in ("n_envs", "n_steps", "steps_per_iteration"):
            if getattr(self, key) < 1:
                raise ConfigError(f"algo.{key} must be >= 1, got {getattr(self, key)}")
        check_positive("algo.lr", self.lr)



class TaskEnv(gym.Env):
    """A task distribution's split as one gymnasium env (SB3 trains on it unchanged).

    Draws a task from ``split`` at every reset, or holds ``task`` when one is given. Envs are
    built once per :meth:`TaskDistribution.env_key` and re-tasked in place. An episode is
    truncated after ``max_steps`` steps (the run's ``max_episode_steps``, as metarl's sampler
    truncates; None: the family's own limit). At an episode's end,
    ``info["episode_success"]`` is 1.0 if ``info["success"]`` was ever true in it.
    """

    metadata = {"render_modes": []}

    def __init__(self, dist: TaskDistribution, split: Split = "train", task: Task | None = None,
                 seed: int = 0, max_steps: int | None = None) -> None:
        self.dist, self.split, self.task, self.max_steps = dist, split, task, max_steps
        self.observation_space, self.action_space = dist.spaces
        self._rng = np.random.default_rng(seed)
        self._envs: dict[str, gym.Env] = {}
        self._env: gym.Env | None = None
        self._success, self._steps = 0.0, 0

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
        self._success, self._steps = 0.0, 0
        obs, info = self._env.reset(seed=int(self._rng.integers(2**31 - 1)))
        return obs.astype(self.observation_space.dtype), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._steps += 1
        truncated = truncated or (not terminated and self._steps == self.max_steps)
        self._success = max(self._success, float(info.get("success", 0.0)))
        if terminated or truncated:
            info["episode_success"] = self._success
        return obs.astype(self.observation_space.dtype), float(reward), terminated, truncated, info

    def close(self) -> None:
        for env in self._envs.values():
            env.close()


def make_vec_env(dist: TaskDistribution, split: Split, n_envs: int, seed: int, task: Task | None = None,
                 max_steps: int | None = None):
    """An SB3 VecEnv of ``n_envs`` TaskEnvs (Monitor-wrapped, so SB3 logs episode returns)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda i=i: Monitor(TaskEnv(dist, split, task, seed + i, max_steps),
                                            info_keywords=("episode_success",)) for i in range(n_envs)])


# SB3's SAC clamps its log-std to [-20, 2] (stable_baselines3.sac.policies).
SAC_LOG_STD = (-20.0, 2.0)


def policy_spec(model: Any) -> PolicySpec:
    """The metarl Gaussian MLP that acts as ``model``'s policy (SB3's default networks)."""
    obs_dim = int(np.prod(model.observation_space.shape))
    act_dim = int(np.prod(model.action_space.shape))
    if _is_sac(model):
        return PolicySpec("gaussian_mlp", obs_dim, act_dim, [256, 256], "relu", 1.0, "head",
                          min_std=math.exp(SAC_LOG_STD[0]), max_std=math.exp(SAC_LOG_STD[1]), squash=True)
    return PolicySpec("gaussian_mlp", obs_dim, act_dim, [64, 64], "tanh", 1.0, "param", min_std=1e-8)


def policy_params(model: Any) -> Params:
    """``model``'s policy weights under :func:`policy_spec`'s parameter names."""
    if _is_sac(model):
        state = model.policy.actor.state_dict()
        names = {"trunk.0": "latent_pi.0", "trunk.2": "latent_pi.2", "mean": "mu", "log_std_head": "log_std"}
    else:
        state = model.policy.state_dict()
        names = {"trunk.0": "mlp_extractor.policy_net.0", "trunk.2": "mlp_extractor.policy_net.2",
                 "mean": "action_net"}
    params = {f"{ours}.{p}": state[f"{theirs}.{p}"].detach().cpu().clone()
              for ours, theirs in names.items() for p in ("weight", "bias")}
    if not _is_sac(model):
        params["log_std"] = state["log_std"].detach().cpu().clone()
    return params


def _is_sac(model: Any) -> bool:
    return hasattr(model.policy, "actor")


@dataclass
class Sb3State:
    """Adaptation state: each task's fine-tuned SB3 model and its env (None before the
    first fine-tuning of a learner that starts from its own policy), and the global random
    generators' state the fine-tuning continues from (None: not started)."""

    tasks: list[Task]
    seed: int
    models: list[Any] | None = None
    envs: list[Any] | None = None
    rng: tuple[Any, ...] | None = None


def _global_rng() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_global_rng(state: tuple[Any, ...]) -> None:
    python, numpy, cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextmanager
def _own_stream(state: Sb3State) -> Iterator[None]:
    """The global random generators on ``state``'s stream while SB3 fine-tunes, and back on
    the caller's (training's) after."""
    outside = _global_rng()
    if state.rng is not None:
        _set_global_rng(state.rng)
    try:
        yield
    finally:
        state.rng = _global_rng()
        _set_global_rng(outside)


class Sb3Learner(NoExtraState):
    """An SB3 model behind the MetaLearner interface.

    Training (``sb3_multitask``) is SB3's ``learn`` across the train split; adaptation is
    ``learn`` on a copy per held-out task, ``adaptation_episodes`` episodes per step.
    """

    adaptation_unit = "episodes"
    eval_deterministic = True  # SB3's evaluate_policy default
    adapts_on_batch = False
    """``adapt`` fine-tunes on episodes SB3 collects itself, not on the ones it is given."""
    resumes_exactly = False
    """SB3 keeps its envs mid-episode, its optimiser's moments and its random state in the
    model, outside metarl's checkpoint (the policy's weights)."""

    def __init__(self, cfg: Sb3Config, dist: TaskDistribution, horizon: int, seed: int = 0,
                 device: str = "cpu", episodes: int = 20, init_state: dict[str, Any] | None = None) -> None:
        self.cfg, self.dist, self.horizon, self.seed, self.device = cfg, dist, horizon, seed, str(device)
        self.adaptation_episodes = episodes
        self.model = self._new_model(make_vec_env(dist, "train", cfg.n_envs, seed, max_steps=horizon), cfg.n_steps,
                                     seed)
        if init_state is not None:  # sb3_finetune: an sb3_multitask run's state_dict
            self._load(self.model, init_state)
        self.policy_spec = policy_spec(self.model)

    @classmethod
    def from_setup(cls, setup: LearnerSetup) -> Sb3Learner:
        cfg = setup.algo
        init = None
        if cfg.name == "sb3_finetune":
            if not cfg.init_from:
                raise ConfigError("sb3_finetune needs algo.init_from=<run dir of an sb3_multitask run>")
            state = setup.load_run(cfg.init_from)
            algo, tasks = state["config"]["algo"], state["config"]["tasks"]["name"]
            if algo["name"] != "sb3_multitask":
                raise ConfigError(f"algo.init_from={cfg.init_from} is a {algo['name']} run, not sb3_multitask")
            if algo.get("sb3_algo", "ppo") != cfg.sb3_algo or tasks != setup.dist.name:
                raise ConfigError(f"algo.init_from={cfg.init_from} trained {algo.get('sb3_algo', 'ppo')} on {tasks}; "
                                  f"this run fine-tunes {cfg.sb3_algo} on {setup.dist.name}")
            init = state["learner"]
        return cls(cfg, setup.dist, setup.max_steps, setup.seeds.learner, setup.device,
                   setup.episodes_per_task, init)

    def _new_model(self, env, n_steps: int, seed: int, fine_tune: bool = False):
        """A PPO or SAC model on ``env``. SAC takes one gradient step per transition
        (``gradient_steps=-1``: as many as the envs stepped); a fine-tuning one starts
        updating at once, where a multi-task one first gathers ``min(1000, n_steps)``
        random-action transitions (within a fine-tuning round's budget those would leave
        it no update at all)."""
        from stable_baselines3 import PPO, SAC

        if self.cfg.sb3_algo == "ppo":
            rollout = n_steps * env.num_envs  # minibatches of at most 64 that divide the rollout
            batch = max(d for d in range(1, min(64, rollout) + 1) if rollout % d == 0)
            return PPO("MlpPolicy", env, n_steps=n_steps, batch_size=batch,
                       learning_rate=self.cfg.lr, seed=seed, device=self.device, verbose=0)
        return SAC("MlpPolicy", env, learning_rate=self.cfg.lr, seed=seed, device=self.device,
                   learning_starts=0 if fine_tune else min(1000, n_steps), gradient_steps=-1, verbose=0)

    @property
    def trains(self) -> bool:
        return self.cfg.name == "sb3_multitask"

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """``steps_per_iteration`` more SB3 timesteps across the train split."""
        before = self.model.num_timesteps
        self.model.learn(self.cfg.steps_per_iteration, reset_num_timesteps=False)
        ctx.add_env_steps(self.model.num_timesteps - before)
        infos = list(self.model.ep_info_buffer)
        ret = float(np.mean([i["r"] for i in infos])) if infos else float("nan")
        metrics = {"train/return_pre": ret, "train/return_post": ret}  # no adaptation in training
        if self.dist.reports_success and infos:
            success = float(np.mean([i.get("episode_success", 0.0) for i in infos]))
            metrics |= {"train/success_pre": success, "train/success_post": success}
        return metrics

    # ----------------------------------------------------------------- adaptation

    def init_adaptation(self, tasks: list[Task], seed: int = 0) -> Sb3State:
        state = Sb3State(list(tasks), seed)
        if self.cfg.name == "sb3_scratch":  # a fresh policy per task from the start
            self._fine_tuners(state)
        return state

    def acting(self, state: Sb3State) -> Acting:
        if state.models is None:
            return Acting(policy_params(self.model))
        return Acting([policy_params(m) for m in state.models])

    def adapt(self, state: Sb3State, batch: EpisodeBatch) -> Sb3State:
        """``adaptation_episodes`` more episodes of SB3 fine-tuning on each task's own env
        (SB3 collects its data itself; ``batch`` is the measurement, not used here)."""
        models = self._fine_tuners(state)
        with _own_stream(state):
            for model in models:
                model.learn(self.adaptation_episodes * self.horizon, reset_num_timesteps=False)
        return state

    def _fine_tuners(self, state: Sb3State) -> list[Any]:
        """Each task's model (copies of the policy, or fresh ones for sb3_scratch) and env,
        task i's seeded with the adaptation's seed + i."""
        if state.models is None:
            state.envs = [make_vec_env(self.dist, "test", 1, state.seed + i, task=task, max_steps=self.horizon)
                          for i, task in enumerate(state.tasks)]
            state.models = []
            with _own_stream(state):
                for i, env in enumerate(state.envs):
                    model = self._new_model(env, self.adaptation_episodes * self.horizon, state.seed + i,
                                            fine_tune=True)
                    if self.cfg.name != "sb3_scratch":
                        self._load(model, copy.deepcopy(self.state_dict()))
                    state.models.append(model)
        return state.models

    def state_dict(self) -> dict:
        """The policy's weights (SAC's: actor and critics) and, for SAC, its entropy
        coefficient's log (None when fixed)."""
        log_ent_coef = getattr(self.model, "log_ent_coef", None)
        return {"policy": {k: v.cpu() for k, v in self.model.policy.state_dict().items()},
                "num_timesteps": int(self.model.num_timesteps),
                "log_ent_coef": None if log_ent_coef is None else log_ent_coef.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self._load(self.model, state)
        self.model.num_timesteps = int(state["num_timesteps"])

    @staticmethod
    def _load(model: Any, state: dict) -> None:
        """``state_dict``'s weights (and entropy coefficient) into ``model``."""
        model.policy.load_state_dict(state["policy"])
        if state.get("log_ent_coef") is not None and getattr(model, "log_ent_coef", None) is not None:
            with torch.no_grad():
                model.log_ent_coef.copy_(state["log_ent_coef"])


register(("sb3_multitask", "sb3_finetune", "sb3_scratch"), Sb3Config, Sb3Learner.from_setup)
