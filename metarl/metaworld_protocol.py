"""Meta-World's own meta-learning evaluation (``metaworld.evaluation.metalearning_evaluation``)
run on a metarl learner, so results compare with published ML1/ML10/ML45 numbers.

The protocol: for each of ``num_evals`` rounds, sample test tasks, let the agent act for
``adaptation_episodes`` episodes per env and adapt (``adaptation_steps`` times), then
measure success over ``evaluation_episodes`` episodes with terminate-on-success.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.envs import Task
from metarl.policies import gaussian_log_prob
from metarl.sampling import EpisodeBatch

PROTOCOL_DEFAULTS = {"num_evals": 10, "adaptation_steps": 1, "adaptation_episodes": 10,
                     "evaluation_episodes": 3}


class MamlAgent:
    """MetaLearningAgent for gradient-based learners: one parameter set per env, adapted
    with the learner's own inner step on the episodes each env collected."""

    def __init__(self, learner: Any, num_envs: int, episodes: int, seed: int = 0) -> None:
        self.learner, self.num_envs, self.episodes = learner, num_envs, episodes
        self.policy = learner.policy.spec.build()
        self.rng = np.random.default_rng(seed)
        self.init()

    def init(self) -> None:
        self.params = [{k: v.cpu() for k, v in self.learner.policy_params.items()}] * self.num_envs
        self.batches: list[EpisodeBatch] = []
        self._clear()

    def _clear(self) -> None:
        self.episodes_done: list[list[dict[str, list]]] = [[] for _ in range(self.num_envs)]
        self.current = [_new_episode() for _ in range(self.num_envs)]

    def _dist(self, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(obs, dtype=torch.float32)
        out = [torch.func.functional_call(self.policy, p, (x[i:i + 1],)) for i, p in enumerate(self.params)]
        return torch.cat([m for m, _ in out]), torch.cat([s for _, s in out])

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.no_grad():
            mean, std = self._dist(observations)
            actions = mean + std * torch.from_numpy(self.rng.standard_normal(mean.shape, dtype=np.float32))
            logp = gaussian_log_prob(mean, std, actions)
        return actions.numpy().astype(np.float64), {"log_probs": logp.numpy()}

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._dist(observations)[0].numpy().astype(np.float64)

    def step(self, timestep: Any) -> None:
        for i in range(self.num_envs):
            if len(self.episodes_done[i]) >= self.episodes:
                continue
            ep = self.current[i]
            ep["obs"].append(timestep.observation[i])
            ep["actions"].append(timestep.action[i])
            ep["rewards"].append(timestep.reward[i])
            ep["log_probs"].append(timestep.aux_policy_outputs["log_probs"][i])
            ep["terminated"].append(bool(timestep.terminated[i]))
            if timestep.terminated[i] or timestep.truncated[i]:
                self.episodes_done[i].append(ep)
                self.current[i] = _new_episode()

    def adapt(self) -> None:
        batch = _to_batch(self.episodes_done, self.episodes)
        self.batches.append(batch)
        adapted = self.learner.adapt([b.to(self.learner.device) for b in self.batches])
        self.params = [{k: v.cpu() for k, v in p.items()} for p in adapted]
        self._clear()

    def reset(self, env_mask: np.ndarray) -> None:
        pass


class Rl2Agent:
    """MetaLearningAgent for RL²: adaptation is the hidden state, carried from the
    adaptation episodes into the evaluation episodes; ``init`` starts new trials."""

    def __init__(self, learner: Any, num_envs: int, seed: int = 0) -> None:
        self.learner, self.num_envs = learner, num_envs
        self.policy = learner.policy.spec.build()
        self.params = {k: v.cpu() for k, v in learner.policy_params.items()}
        self.rng = np.random.default_rng(seed)
        self.init()

    def init(self) -> None:
        n, a = self.num_envs, self.policy.act_dim
        self.h = self.policy.initial_state(n)
        self.prev_action, self.prev_reward = torch.zeros(n, a), torch.zeros(n)
        self.new_episode = torch.ones(n)
        self._last_obs: np.ndarray | None = None

    def _act(self, observations: np.ndarray, stochastic: bool) -> tuple[np.ndarray, np.ndarray]:
        x = self.policy.inputs(torch.as_tensor(observations, dtype=torch.float32), self.prev_action,
                               self.prev_reward, self.new_episode, self.params["reward_scale"])
        with torch.no_grad():
            mean, std, _, self.h = self.policy.step(x, self.h, self.params)
            actions = mean + std * torch.from_numpy(self.rng.standard_normal(mean.shape, dtype=np.float32)) \
                if stochastic else mean
            logp = gaussian_log_prob(mean, std, actions)
        self.prev_action, self.new_episode = actions, torch.zeros(self.num_envs)
        return actions.numpy().astype(np.float64), logp.numpy()

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        actions, logp = self._act(observations, stochastic=True)
        return actions, {"log_probs": logp}

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._act(observations, stochastic=False)[0]

    def step(self, timestep: Any) -> None:
        self.prev_reward = torch.as_tensor(timestep.reward, dtype=torch.float32)
        ended = np.logical_or(timestep.terminated, timestep.truncated)
        self.new_episode = torch.as_tensor(ended, dtype=torch.float32)

    def adapt(self) -> None:
        pass

    def reset(self, env_mask: np.ndarray) -> None:
        # A new episode, not a new trial: keep the state, raise the flag.
        self.new_episode = torch.maximum(self.new_episode, torch.as_tensor(env_mask, dtype=torch.float32))


def _new_episode() -> dict[str, list]:
    return {"obs": [], "actions": [], "rewards": [], "log_probs": [], "terminated": []}


def _to_batch(episodes: list[list[dict[str, list]]], count: int) -> EpisodeBatch:
    n, t = len(episodes), max(len(ep["obs"]) for eps in episodes for ep in eps[:count])
    o, a = len(episodes[0][0]["obs"][0]), len(episodes[0][0]["actions"][0])
    arrays = {"obs": np.zeros((n, count, t, o), np.float32), "actions": np.zeros((n, count, t, a), np.float32),
              "rewards": np.zeros((n, count, t), np.float32), "log_probs": np.zeros((n, count, t), np.float32),
              "terminated": np.zeros((n, count, t), bool), "truncated": np.zeros((n, count, t), bool),
              "mask": np.zeros((n, count, t), bool)}
    for i, eps in enumerate(episodes):
        for e, ep in enumerate(eps[:count]):
            length = len(ep["obs"])
            for key in ("obs", "actions", "rewards", "log_probs"):
                arrays[key][i, e, :length] = np.asarray(ep[key])
            arrays["mask"][i, e, :length] = True
            arrays["terminated"][i, e, length - 1] = ep["terminated"][-1]
            arrays["truncated"][i, e, length - 1] = not ep["terminated"][-1]
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return EpisodeBatch(**tensors, last_obs=torch.zeros(n, count, o), success=None,
                        tasks=[Task("metaworld-protocol", {"env": i}) for i in range(n)])


def run_protocol(learner: Any, dist_name: str, dist_seed: int, meta_batch_size: int = 20,
                 max_episode_steps: int | None = None, seed: int = 0, **settings: int) -> dict[str, Any]:
    """Meta-World's metalearning_evaluation on the test split of ``dist_name`` (ml1/..., ml10, ...)."""
    import metaworld  # noqa: F401  (registers the Meta-World/... gymnasium ids)
    from metaworld.evaluation import metalearning_evaluation

    settings = PROTOCOL_DEFAULTS | settings
    if dist_name.startswith("ml1/"):
        env_id, kwargs = "Meta-World/ML1-test", {"env_name": dist_name.removeprefix("ml1/")}
    elif dist_name in ("ml10", "ml25", "ml45"):
        env_id, kwargs = f"Meta-World/{dist_name.upper()}-test", {}
    else:
        raise ValueError(f"--protocol metaworld needs a Meta-World task distribution, not {dist_name!r}")
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    envs = gym.make_vec(env_id, meta_batch_size=meta_batch_size, vector_strategy="sync",
                        seed=dist_seed, **kwargs)
    if learner.unit == "episodes":
        agent: Any = Rl2Agent(learner, envs.num_envs, seed)
    else:
        agent = MamlAgent(learner, envs.num_envs, settings["adaptation_episodes"], seed)
    try:
        success, mean_return, per_task = metalearning_evaluation(agent, envs, **settings)
    finally:
        envs.close()
    return {"success_rate": float(success), "return": float(mean_return),
            "per_task_success": {k: float(v) for k, v in per_task.items()},
            "settings": settings | {"meta_batch_size": meta_batch_size, "seed": seed,
                                    "max_episode_steps": max_episode_steps}}
