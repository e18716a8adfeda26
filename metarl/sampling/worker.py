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

        A feed-forward policy rolls one item at a time, all its episodes in lockstep under
        the item's parameters (loaded into the module once). A recurrent policy rolls each
        item as one trial: its episodes in sequence with the hidden state carried across
        them (reset at the start of the trial); the trials of all items sharing a parameter
        set step in lockstep. Both go through the same lane loop (:meth:`_run_lanes`).
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
        envs = self._lanes([item.task] * n)
        spec = self.policy.spec
        out = _empty((1, n), max_steps, spec.obs_dim, spec.act_dim)
        policy = self.policy

        def act(lanes: np.ndarray, obs: torch.Tensor, _new: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return policy(obs)

        # One row (the item), lane e rolls episode e.
        self._run_lanes(envs, [item] * n, np.zeros(n, np.int64), np.arange(n), 1, out, act, None,
                        seed, max_steps, deterministic)
        return {k: v[0] for k, v in out.items()}

    def _rollout_trials(self, items: list[WorkItem], params: dict[str, np.ndarray], seed: int,
                        max_steps: int, deterministic: bool) -> list[dict[str, np.ndarray]]:
        policy = self.policy
        torch_params = {k: torch.from_numpy(v) for k, v in params.items()}
        n, episodes = len(items), items[0].episodes
        envs = self._lanes([item.task for item in items])
        out = _empty((n, episodes), max_steps, policy.spec.obs_dim, policy.spec.act_dim)
        prev_action = torch.zeros(n, policy.act_dim)
        prev_reward = torch.zeros(n)
        h = policy.initial_state(n)

        def act(lanes: np.ndarray, obs: torch.Tensor, new: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.from_numpy(lanes)
            x = policy.inputs(obs, prev_action[idx], prev_reward[idx], torch.from_numpy(new),
                              torch_params["reward_scale"])
            mean, std, _, h[idx] = policy.step(x, h[idx], torch_params)
            return mean, std

        def observe(lanes: np.ndarray, actions: torch.Tensor, rewards: np.ndarray) -> None:
            idx = torch.from_numpy(lanes)
            prev_action[idx], prev_reward[idx] = actions, torch.from_numpy(rewards)

        # Row i (item i) is lane i's trial: episodes 0..E-1 in sequence.
        self._run_lanes(envs, items, np.arange(n), np.zeros(n, np.int64), episodes, out, act, observe,
                        seed, max_steps, deterministic)
        return [{k: v[i] for k, v in out.items()} for i in range(n)]

    def _run_lanes(self, envs: list[Any], items: list[WorkItem], rows: np.ndarray, first: np.ndarray,
                   trial: int, out: dict[str, np.ndarray], act: Any, observe: Any, seed: int,
                   max_steps: int, deterministic: bool) -> None:
        """Step lanes in lockstep until each has rolled ``trial`` episodes.

        Lane ``l`` rolls episodes ``first[l], first[l] + 1, ...`` of ``items[l]`` in ``envs[l]``
        and records them in row ``rows[l]`` of ``out`` (``out[key][row, episode, t]``). ``act(lanes, obs, new)``
        gives the policy's mean and std for the active lanes (``new``: 1 at an episode's
        first step); ``observe(lanes, actions, rewards)`` (recurrent policies) sees what each
        lane did. Each episode's noise is drawn from its own generator at its reset, as
        many steps as it may take, so a lockstep's noise is one gather.
        """
        n = len(envs)
        rows_l, episode, t, done = rows.tolist(), first.tolist(), [0] * n, [0] * n
        obs_dim, act_dim = out["obs"].shape[-1], out["actions"].shape[-1]
        current = np.zeros((n, obs_dim), np.float32)
        new = np.ones(n, np.float32)
        noise = np.zeros((n, max_steps, act_dim), np.float32)
        space = envs[0].action_space
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        steps = [env.step for env in envs]
        last = max_steps - 1
        has_success = False

        def start(lane: int) -> None:
            env_seed, rng = episode_seeds(seed, items[lane].slot, episode[lane])
            o, _ = envs[lane].reset(seed=env_seed)
            current[lane] = np.ravel(o)  # cast to float32 on assignment
            if not deterministic:
                noise[lane] = rng.standard_normal((max_steps, act_dim), dtype=np.float32)
            new[lane], t[lane] = 1.0, 0

        for lane in range(n):
            start(lane)
        active = list(range(n))
        while active:
            lanes = np.array(active)
            r = np.array([rows_l[i] for i in active])
            e = np.array([episode[i] for i in active])
            ts = np.array([t[i] for i in active])
            with torch.no_grad():
                mean, std = act(lanes, torch.from_numpy(current[lanes]), new[lanes])
                actions = mean if deterministic else mean + std * torch.from_numpy(noise[lanes, ts])
                logp = gaussian_log_prob(mean, std, actions)
            actions_np = actions.numpy()
            clipped = np.clip(actions_np, low, high)
            out["obs"][r, e, ts] = current[lanes]
            out["actions"][r, e, ts] = actions_np
            out["log_probs"][r, e, ts] = logp.numpy()
            out["mask"][r, e, ts] = True
            new[lanes] = 0.0
            rewards = np.empty(len(active), np.float32)
            success = np.zeros(len(active), np.float32)
            still = []
            for j, lane in enumerate(active):
                o2, reward, term, trunc, info = steps[lane](clipped[j])
                rewards[j] = reward
                if "success" in info:
                    has_success = True
                    success[j] = info["success"]
                if term or trunc or t[lane] == last:
                    row, ep, step = rows_l[lane], episode[lane], t[lane]
                    out["terminated"][row, ep, step] = bool(term)
                    out["truncated"][row, ep, step] = not term
                    out["last_obs"][row, ep] = np.ravel(o2)
                    done[lane] += 1
                    if done[lane] < trial:
                        episode[lane] += 1
                        start(lane)
                        still.append(lane)
                else:
                    current[lane] = np.ravel(o2)
                    t[lane] += 1
                    still.append(lane)
            out["rewards"][r, e, ts] = rewards
            if has_success:
                out["success"][r, e, ts] = success
            if observe is not None:
                observe(lanes, actions, rewards)
            active = still
        if not has_success:
            del out["success"]

    def close(self) -> None:
        for pool in self._envs.values():
            for env in pool:
                env.close()
        self._envs.clear()


def _empty(rows: tuple[int, int], steps: int, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Zeroed buffers (*rows, T, ...), rows = (items, episodes), that a rollout fills in."""
    return {
        "obs": np.zeros((*rows, steps, obs_dim), np.float32),
        "actions": np.zeros((*rows, steps, act_dim), np.float32),
        "rewards": np.zeros((*rows, steps), np.float32),
        "log_probs": np.zeros((*rows, steps), np.float32),
        "terminated": np.zeros((*rows, steps), bool),
        "truncated": np.zeros((*rows, steps), bool),
        "mask": np.zeros((*rows, steps), bool),
        "success": np.zeros((*rows, steps), np.float32),
        "last_obs": np.zeros((*rows, obs_dim), np.float32),
    }
