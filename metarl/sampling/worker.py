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

    def __init__(self, dist: TaskDistribution, spec: PolicySpec, single_thread: bool = True) -> None:
        """``single_thread``: one torch thread, for a worker process that shares the cores
        with others (the ``local`` backend keeps the learner's threads instead)."""
        if single_thread:
            torch.set_num_threads(1)
        self.dist = dist
        self.policy = spec.build()
        self.policy.requires_grad_(False)
        self._envs: dict[str, list[Any]] = {}

    def _lanes(self, tasks: list[Task]) -> list[Any]:
        """One env per concurrent episode (lane), set to its task; reused across calls."""
        counts: dict[str, int] = {}
        envs = []
        for task in tasks:
            key = self.dist.env_key(task)
            envs.append(self._env(task, counts.get(key, 0)))
            counts[key] = counts.get(key, 0) + 1
        return envs

    def _env(self, task: Task, lane: int) -> Any:
        pool = self._envs.setdefault(self.dist.env_key(task), [])
        while len(pool) <= lane:
            pool.append(self.dist.make_env(task))
        env = pool[lane]
        self.dist.set_task(env, task)
        return env

    def collect(self, items: list[WorkItem], params: dict[int, dict[str, np.ndarray]],
                seed: int, max_steps: int, deterministic: bool = False) -> list[dict[str, np.ndarray]]:
        """Roll every item's episodes; one dict of padded arrays (E, T, ...) per item.

        A recurrent policy rolls each item as one trial: its episodes in sequence with the
        hidden state carried across them (reset at the start of the trial); the trials of
        all items step in lockstep.
        """
        if self.policy.spec.recurrent:
            results: dict[int, dict[str, np.ndarray]] = {}
            for key in sorted({it.param_key for it in items}):
                group = [it for it in items if it.param_key == key]
                for it, out in zip(group, self._rollout_trials(group, params[key], seed, max_steps,
                                                               deterministic), strict=True):
                    results[it.slot] = out
            return [results[it.slot] for it in items]
        return [self._rollout(item, params[item.param_key], seed, max_steps, deterministic)
                for item in items]

    def _rollout(self, item: WorkItem, params: dict[str, np.ndarray], seed: int,
                 max_steps: int, deterministic: bool) -> dict[str, np.ndarray]:
        # Load the item's parameters into the worker's own module once: a functional_call
        # per step costs more than the 3-layer forward itself.
        with torch.no_grad():
            for k, v in params.items():
                self.policy.get_parameter(k).copy_(torch.from_numpy(v))
        n = item.episodes
        envs, rngs, obs = [], [], []
        for e, env in enumerate(self._lanes([item.task] * n)):
            env_seed, rng = episode_seeds(seed, item.slot, e)
            o, _ = env.reset(seed=env_seed)
            envs.append(env)
            rngs.append(rng)
            obs.append(np.asarray(o, dtype=np.float32).ravel())
        obs_dim = obs[0].shape[0]
        space = envs[0].action_space
        act_dim = int(np.prod(space.shape))
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)

        out = _empty(n, max_steps, obs_dim, act_dim)
        has_success = False
        active = list(range(n))
        current = np.stack(obs)
        for t in range(max_steps):
            if not active:
                break
            batch_obs = torch.from_numpy(current[active])
            with torch.no_grad():
                mean, std = self.policy(batch_obs)
                actions, logp = _sample(mean, std, [rngs[i] for i in active], deterministic)
            actions_np, logp_np = actions.numpy(), logp.numpy()
            still = []
            for j, i in enumerate(active):
                o2, _, ended, reported = _step_and_record(envs[i], out, i, t, current[i], actions_np[j],
                                                          logp_np[j], low, high, max_steps)
                has_success |= reported
                if not ended:
                    current[i] = o2
                    still.append(i)
            active = still
        if not has_success:
            del out["success"]
        return out

    def _rollout_trials(self, items: list[WorkItem], params: dict[str, np.ndarray], seed: int,
                        max_steps: int, deterministic: bool) -> list[dict[str, np.ndarray]]:
        policy = self.policy
        torch_params = {k: torch.from_numpy(v) for k, v in params.items()}
        n, episodes = len(items), items[0].episodes
        envs = self._lanes([item.task for item in items])
        act_dim = policy.act_dim
        space = envs[0].action_space
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        outs = [_empty(episodes, max_steps, policy.obs_dim, act_dim) for _ in items]
        episode = [0] * n
        t = [0] * n
        rngs: list[np.random.Generator] = [None] * n  # type: ignore[list-item]
        current = np.zeros((n, policy.obs_dim), np.float32)
        prev_action = np.zeros((n, act_dim), np.float32)
        prev_reward = np.zeros(n, np.float32)
        new_episode = np.ones(n, np.float32)
        h = policy.initial_state(n)
        has_success = False

        def start(i: int) -> None:
            env_seed, rngs[i] = episode_seeds(seed, items[i].slot, episode[i])
            o, _ = envs[i].reset(seed=env_seed)
            current[i] = np.asarray(o, dtype=np.float32).ravel()
            new_episode[i], t[i] = 1.0, 0

        for i in range(n):
            start(i)
        active = list(range(n))
        while active:
            idx = torch.tensor(active)
            x = policy.inputs(torch.from_numpy(current[active]), torch.from_numpy(prev_action[active]),
                              torch.from_numpy(prev_reward[active]), torch.from_numpy(new_episode[active]),
                              torch_params["reward_scale"])
            with torch.no_grad():
                mean, std, _, h_new = policy.step(x, h[idx], torch_params)
                actions, logp = _sample(mean, std, [rngs[i] for i in active], deterministic)
            h[idx] = h_new
            actions_np, logp_np = actions.numpy(), logp.numpy()
            still = []
            for j, i in enumerate(active):
                o2, r, ended, reported = _step_and_record(envs[i], outs[i], episode[i], t[i], current[i],
                                                          actions_np[j], logp_np[j], low, high, max_steps)
                has_success |= reported
                prev_action[i], prev_reward[i], new_episode[i] = actions_np[j], r, 0.0
                if ended:
                    episode[i] += 1
                    if episode[i] < episodes:
                        start(i)
                        still.append(i)
                else:
                    current[i], t[i] = o2, t[i] + 1
                    still.append(i)
            active = still
        for out in outs:
            if not has_success:
                del out["success"]
        return outs

    def close(self) -> None:
        for pool in self._envs.values():
            for env in pool:
                env.close()
        self._envs.clear()


def _sample(mean: torch.Tensor, std: torch.Tensor, rngs: list[np.random.Generator],
            deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions (the mean, or mean + std * noise from each lane's generator) and log-probs."""
    if deterministic:
        actions = mean
    else:
        noise = np.stack([rng.standard_normal(mean.shape[-1], dtype=np.float32) for rng in rngs])
        actions = mean + std * torch.from_numpy(noise)
    return actions, gaussian_log_prob(mean, std, actions)


def _step_and_record(env: Any, out: dict[str, np.ndarray], e: int, t: int, obs: np.ndarray,
                     action: np.ndarray, logp: float, low: np.ndarray, high: np.ndarray,
                     max_steps: int) -> tuple[np.ndarray, float, bool, bool]:
    """Step ``env`` with ``action`` (clipped to the action space) and record step ``t`` of
    episode ``e`` in ``out``. Returns (next obs, reward, episode ended, success reported)."""
    o2, r, term, trunc, info = env.step(np.clip(action, low, high))
    o2 = np.asarray(o2, dtype=np.float32).ravel()
    out["obs"][e, t] = obs
    out["actions"][e, t] = action
    out["rewards"][e, t] = r
    out["log_probs"][e, t] = logp
    out["mask"][e, t] = True
    reported = "success" in info
    if reported:
        out["success"][e, t] = float(info["success"])
    ended = bool(term) or bool(trunc) or t == max_steps - 1
    if ended:
        out["terminated"][e, t] = bool(term)
        out["truncated"][e, t] = not term
        out["last_obs"][e] = o2
    return o2, float(r), ended, reported


def _empty(episodes: int, steps: int, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Zeroed per-item buffers (E, T, ...) that a rollout fills in."""
    return {
        "obs": np.zeros((episodes, steps, obs_dim), np.float32),
        "actions": np.zeros((episodes, steps, act_dim), np.float32),
        "rewards": np.zeros((episodes, steps), np.float32),
        "log_probs": np.zeros((episodes, steps), np.float32),
        "terminated": np.zeros((episodes, steps), bool),
        "truncated": np.zeros((episodes, steps), bool),
        "mask": np.zeros((episodes, steps), bool),
        "success": np.zeros((episodes, steps), np.float32),
        "last_obs": np.zeros((episodes, obs_dim), np.float32),
    }

