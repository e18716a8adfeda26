"""The rollout worker: a few envs and a CPU copy of the policy, stepping whole episodes.

The same class runs in process (``local``), in a worker process (``process``) and as a
Ray actor (``ray``). One call to :meth:`RolloutWorker.collect` rolls every episode of the
work items it is given, with no round trip per step: all episodes of a task step in
lockstep and share one batched policy forward.

Randomness is per episode: episode ``e`` of task slot ``i`` in a collection with seed
``s`` resets its env with, and draws its action noise from, ``SeedSequence([s, i, e])``.
Results therefore do not depend on the backend, the number of workers or which worker
ran what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.envs import Task, TaskDistribution
from metarl.policies import PolicySpec, gaussian_log_prob


@dataclass(frozen=True)
class WorkItem:
    """Episodes to roll for one task slot of a collection."""

    slot: int
    """The task's position in the collection (part of every episode's seed)."""
    task: Task
    param_key: int
    """Which parameter set (of the collection's) acts on this task."""
    episodes: int


def episode_seeds(seed: int, slot: int, episode: int) -> tuple[int, np.random.Generator]:
    """(env reset seed, action-noise generator) of one episode."""
    seq = np.random.SeedSequence([seed, slot, episode])
    env_seq, noise_seq = seq.spawn(2)
    return int(env_seq.generate_state(1)[0]), np.random.default_rng(noise_seq)


class RolloutWorker:
    """Holds envs (reused across collections, re-tasked in place) and a policy module."""

    def __init__(self, dist: TaskDistribution, spec: PolicySpec) -> None:
        torch.set_num_threads(1)
        self.dist = dist
        self.policy = spec.build()
        self.policy.requires_grad_(False)
        self._envs: dict[str, list[Any]] = {}

    def _env(self, task: Task, lane: int) -> Any:
        pool = self._envs.setdefault(self.dist.env_key(task), [])
        while len(pool) <= lane:
            pool.append(self.dist.make_env(task))
        env = pool[lane]
        self.dist.set_task(env, task)
        return env

    def collect(self, items: list[WorkItem], params: dict[int, dict[str, np.ndarray]],
                seed: int, max_steps: int, deterministic: bool = False) -> list[dict[str, np.ndarray]]:
        """Roll every item's episodes; one dict of padded arrays (E, T, ...) per item."""
        return [self._rollout(item, params[item.param_key], seed, max_steps, deterministic)
                for item in items]

    def _rollout(self, item: WorkItem, params: dict[str, np.ndarray], seed: int,
                 max_steps: int, deterministic: bool) -> dict[str, np.ndarray]:
        torch_params = {k: torch.from_numpy(v) for k, v in params.items()}
        n = item.episodes
        envs, rngs, obs = [], [], []
        key_counts: dict[str, int] = {}
        for e in range(n):
            key = self.dist.env_key(item.task)
            lane = key_counts.get(key, 0)
            key_counts[key] = lane + 1
            env = self._env(item.task, lane)
            env_seed, rng = episode_seeds(seed, item.slot, e)
            o, _ = env.reset(seed=env_seed)
            envs.append(env)
            rngs.append(rng)
            obs.append(np.asarray(o, dtype=np.float32).ravel())
        obs_dim = obs[0].shape[0]
        space = envs[0].action_space
        act_dim = int(np.prod(space.shape))
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)

        out = {
            "obs": np.zeros((n, max_steps, obs_dim), np.float32),
            "actions": np.zeros((n, max_steps, act_dim), np.float32),
            "rewards": np.zeros((n, max_steps), np.float32),
            "log_probs": np.zeros((n, max_steps), np.float32),
            "terminated": np.zeros((n, max_steps), bool),
            "truncated": np.zeros((n, max_steps), bool),
            "mask": np.zeros((n, max_steps), bool),
            "success": np.zeros((n, max_steps), np.float32),
            "last_obs": np.zeros((n, obs_dim), np.float32),
        }
        has_success = False
        active = list(range(n))
        current = np.stack(obs)
        for t in range(max_steps):
            if not active:
                break
            batch_obs = torch.from_numpy(current[active])
            with torch.no_grad():
                mean, std = torch.func.functional_call(self.policy, torch_params, (batch_obs,))
                if deterministic:
                    actions = mean
                else:
                    noise = torch.from_numpy(np.stack([rngs[i].standard_normal(act_dim, dtype=np.float32)
                                                       for i in active]))
                    actions = mean + std * noise
                logp = gaussian_log_prob(mean, std, actions)
            actions_np, logp_np = actions.numpy(), logp.numpy()
            still = []
            for j, i in enumerate(active):
                o2, r, term, trunc, info = envs[i].step(np.clip(actions_np[j], low, high))
                o2 = np.asarray(o2, dtype=np.float32).ravel()
                out["obs"][i, t] = current[i]
                out["actions"][i, t] = actions_np[j]
                out["rewards"][i, t] = r
                out["log_probs"][i, t] = logp_np[j]
                out["mask"][i, t] = True
                if "success" in info:
                    has_success = True
                    out["success"][i, t] = float(info["success"])
                trunc = bool(trunc) or t == max_steps - 1
                if term or trunc:
                    out["terminated"][i, t] = bool(term)
                    out["truncated"][i, t] = not term
                    out["last_obs"][i] = o2
                else:
                    current[i] = o2
                    still.append(i)
            active = still
        if not has_success:
            del out["success"]
        return out

    def close(self) -> None:
        for pool in self._envs.values():
            for env in pool:
                env.close()
        self._envs.clear()
