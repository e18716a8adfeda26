"""The rollout worker: a few envs and a CPU copy of the policy, stepping whole episodes.

The same class runs in process (``local``), in a worker process (``process``) and as a
Ray actor (``ray``). One call to :meth:`RolloutWorker.collect` rolls every episode of the
work items it is given, with no round trip per step: all episodes of a task step in
lockstep and share one batched policy call.

Randomness is per episode: episode ``e`` of task slot ``i`` in a collection with seed
``s`` resets its env with, and draws its action noise from, ``SeedSequence([s, i, e])``.
A feed-forward policy computes each lane's row on its own
(:class:`~metarl.policies.RowwiseMLP`), so its results do not depend on the backend, the
number of workers, ``max_lanes`` or which worker ran what; a recurrent policy's trials of one parameter set
share a GRU batch per lockstep, whose rounding may depend on its size (see
:mod:`metarl.sampling.sampler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.envs import Task, TaskDistribution
from metarl.policies import PolicySpec, gaussian_log_prob, one_blas_thread
from metarl.policies.acting import CARRY_KEYS, Actor, frozen_copy


@dataclass(frozen=True)
class WorkItem:
    """Episodes to roll for one task slot of a collection."""

    slot: int
    """The task's position in the collection (part of every episode's seed)."""
    task: Task
    param_key: int
    """Which parameter set (of the collection's) acts on this task."""
    episodes: int
    first_episode: int = 0
    """Index of the item's first episode among the task's episodes (part of its seeds)."""
    carry: dict[str, np.ndarray] | None = None
    """Recurrent policies: the state the task's trial continues from (None: a new trial)."""


def episode_seeds(seed: int, slot: int, episode: int) -> tuple[int, np.random.Generator]:
    """(env reset seed, action-noise generator) of one episode."""
    seq = np.random.SeedSequence([seed, slot, episode])
    env_seq, noise_seq = seq.spawn(2)
    return int(env_seq.generate_state(1)[0]), np.random.default_rng(noise_seq)


class RolloutWorker:
    """Holds envs (reused across collections, re-tasked in place) and policy modules."""

    def __init__(self, dist: TaskDistribution, spec: PolicySpec, single_thread: bool = True,
                 max_lanes: int = 16) -> None:
        """``single_thread``: one torch thread, for a worker process that shares the cores
        with others (the ``local`` backend keeps the learner's threads instead).
        ``max_lanes``: most episodes stepped in lockstep, hence most envs held per env
        class (a Meta-World env holds ~20 MB); an item with more episodes than this
        still steps as one lockstep of its own."""
        if single_thread:
            torch.set_num_threads(1)
        if max_lanes < 1:
            raise ValueError(f"max_lanes must be >= 1, got {max_lanes}")
        self.dist = dist
        self.policy = frozen_copy(spec)
        self.max_lanes = max_lanes
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

        The items step in lockstep, up to ``max_lanes`` concurrent episodes (lanes) at a
        time, whatever their parameter sets. A feed-forward policy gives each episode of an
        item its own lane. A recurrent policy rolls each item as one trial in one lane: its
        episodes in sequence with the hidden state carried across them (reset at the start
        of the trial). The policy runs once per lockstep on each forward group: for a
        feed-forward policy an item's active lanes, for a recurrent one the active lanes of
        all items sharing a parameter set (the GRU step costs too much to run per trial).
        A feed-forward item's rows are therefore computed the same whichever other items
        share the worker or the lockstep.
        """
        with one_blas_thread():  # the row-wise forward's rows are independent on one BLAS thread
            return self._collect(items, params, seed, max_steps, deterministic)

    def _collect(self, items: list[WorkItem], params: dict[int, dict[str, np.ndarray]],
                 seed: int, max_steps: int, deterministic: bool) -> list[dict[str, np.ndarray]]:
        per_lane = 1 if self.policy.spec.recurrent else None
        results: list[dict[str, np.ndarray]] = []
        chunk: list[WorkItem] = []
        lanes = 0
        for item in items:
            need = per_lane or item.episodes
            if chunk and lanes + need > self.max_lanes:
                results += self._rollout(chunk, params, seed, max_steps, deterministic)
                chunk, lanes = [], 0
            chunk.append(item)
            lanes += need
        if chunk:
            results += self._rollout(chunk, params, seed, max_steps, deterministic)
        return results

    def _rollout(self, items: list[WorkItem], params: dict[int, dict[str, np.ndarray]], seed: int,
                 max_steps: int, deterministic: bool) -> list[dict[str, np.ndarray]]:
        """One lockstep over ``items``; lanes are laid out so each forward group is a
        contiguous run of lane indices."""
        spec = self.policy.spec
        n = len(items)
        episodes = max(it.episodes for it in items)
        out = _empty((n, episodes), max_steps, spec.obs_dim, spec.act_dim)
        keys = sorted({it.param_key for it in items})
        if spec.recurrent:
            if any(it.episodes != episodes for it in items):
                raise ValueError("a recurrent policy's trials must have equal episode counts, got "
                                 f"{sorted({it.episodes for it in items})}")
            # Lane l rolls the trial of item order[l]: episodes 0..E-1 in row order[l].
            order = sorted(range(n), key=lambda i: keys.index(items[i].param_key))
            rows = np.array(order)
            first = np.zeros(n, np.int64)
            lane_items = [items[i] for i in order]
            groups = [keys.index(it.param_key) for it in lane_items]
            carry = _lane_carry(lane_items, spec)
            actor = Actor(spec, [params[k] for k in keys], groups, carry, modules=[self.policy])
            trial = episodes
        else:
            # Item i's episode e is a lane of its own, recorded in row i.
            rows = np.repeat(np.arange(n), [it.episodes for it in items])
            first = np.concatenate([np.arange(it.episodes) for it in items])
            lane_items = [items[i] for i in rows]
            actor = Actor(spec, [params[it.param_key] for it in items], rows.tolist(), modules=[self.policy])
            trial = 1
        envs = self._lanes([it.task for it in lane_items])
        self._run_lanes(envs, lane_items, rows, first, trial, out, actor, seed, max_steps, deterministic)
        # Log-probs in one pass rather than per lockstep: gaussian_log_prob is elementwise,
        # then a sum over each row's own action dims, so every row gets the same numbers.
        mean, std = torch.from_numpy(out.pop("mean")), torch.from_numpy(out.pop("std"))
        out["log_probs"] = gaussian_log_prob(mean, std, torch.from_numpy(out["actions"])).numpy()
        out["log_probs"][~out["mask"]] = 0.0
        results = [{k: v[i, :items[i].episodes] for k, v in out.items()} for i in range(n)]
        final = actor.carry()
        if final is not None:  # where each trial ended: its item's row
            for lane, row in enumerate(rows.tolist()):
                results[row] |= {f"carry.{k}": v[lane].numpy() for k, v in final.items()}
        return results

    def _run_lanes(self, envs: list[Any], items: list[WorkItem], rows: np.ndarray, first: np.ndarray,
                   trial: int, out: dict[str, np.ndarray], actor: Actor, seed: int,
                   max_steps: int, deterministic: bool) -> None:
        """Step lanes in lockstep until each has rolled ``trial`` episodes.

        Lane ``l`` rolls episodes ``first[l], first[l] + 1, ...`` of ``items[l]`` in ``envs[l]``
        and records them in row ``rows[l]`` of ``out`` (``out[key][row, episode, t]``); ``actor``
        acts for the active lanes and observes what they did. Episode ``e`` of an item is
        seeded as the item's episode ``first_episode + e``. Each episode's noise is drawn from
        its own generator at its reset, as many steps as it may take, so a lockstep's noise
        is one gather. Each step's mean and std go to ``out["mean"]`` and ``out["std"]``.

        While every lane is active at the same step and the lanes' (row, episode) records
        are evenly spaced in ``out`` (Meta-World, whose episodes all run to the horizon),
        a lockstep reads and records through slices; otherwise through index arrays. The
        envs' results are gathered per lockstep and written once.
        """
        n = len(envs)
        per_row = out["obs"].shape[1]
        # Views (``_empty``'s buffers are contiguous), indexed by row * per_row + episode.
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in out.items()}
        rows_l, episode, t, done = rows.tolist(), first.tolist(), [0] * n, [0] * n
        record = rows * per_row + first  # each lane's record in ``flat``
        obs_dim, act_dim = out["obs"].shape[-1], out["actions"].shape[-1]
        current = np.zeros((n, obs_dim), np.float32)
        new = np.ones(n, np.float32)
        noise = np.zeros((n, max_steps, act_dim), np.float32)
        space = envs[0].action_space
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        steps = [env.step for env in envs]
        spec = actor.spec
        recurrent = spec.recurrent  # only a recurrent policy reads where episodes start
        last = max_steps - 1
        has_success = False

        def start(lane: int) -> None:
            env_seed, rng = episode_seeds(seed, items[lane].slot, items[lane].first_episode + episode[lane])
            o, _ = envs[lane].reset(seed=env_seed)
            current[lane] = np.ravel(o)  # cast to float32 on assignment
            if not deterministic:
                noise[lane] = rng.standard_normal((max_steps, act_dim), dtype=np.float32)
            new[lane], t[lane] = 1.0, 0
            record[lane] = rows_l[lane] * per_row + episode[lane]

        for lane in range(n):
            start(lane)
        active = list(range(n))
        every = np.arange(n)
        together, step_now, spaced = True, 0, _evenly_spaced(record)  # every lane at step_now
        while active:
            if together and spaced is not None:
                lanes, at, obs = every, (spaced, step_now), current.copy()
                step_noise, lane_new = noise[:, step_now], new
            else:
                lanes = np.array(active)
                ts = np.array([t[i] for i in active])
                at, obs, step_noise, lane_new = (record[lanes], ts), current[lanes], noise[lanes, ts], new[lanes]
            mean, std = actor.mean_std(lanes, obs, lane_new if recurrent else None)
            actions = mean if deterministic else mean + std * step_noise
            clipped = spec.env_action(actions, low, high)
            flat["obs"][at] = obs
            flat["actions"][at] = actions
            flat["mean"][at] = mean
            flat["std"][at] = std
            if recurrent:
                new[lanes] = 0.0
            next_obs, rewards, success, ended = [], [], [], []
            for lane, action in zip(active, clipped, strict=True):
                o2, reward, term, trunc, info = steps[lane](action)
                next_obs.append(np.ravel(o2))
                rewards.append(reward)
                success.append(info.get("success", 0.0))
                has_success = has_success or "success" in info
                if term or trunc or t[lane] == last:
                    ended.append((lane, term, o2))
            k = len(active)
            step_rewards = np.array(rewards, np.float32).reshape(k)
            flat["rewards"][at] = step_rewards
            if has_success:
                flat["success"][at] = np.array(success, np.float32).reshape(k)
            current[lanes] = next_obs  # cast to float32; ended lanes are reset below
            for lane in active:  # ended lanes too: start() sets a new episode's to 0
                t[lane] += 1
            still = active
            if ended:
                for lane, term, o2 in ended:
                    r, step = record[lane], t[lane] - 1
                    flat["terminated"][r, step] = bool(term)
                    flat["truncated"][r, step] = not term
                    flat["mask"][r, :step + 1] = True
                    flat["last_obs"][r] = np.ravel(o2)
                    done[lane] += 1
                    if done[lane] < trial:
                        episode[lane] += 1
                        start(lane)
                finished = {lane for lane, _, _ in ended if done[lane] >= trial}
                still = [lane for lane in active if lane not in finished]
                # Still together only if every lane ended here and started its next episode.
                together = together and len(ended) == n and not finished
                step_now, spaced = 0, _evenly_spaced(record) if together else None
            else:
                step_now += 1
            actor.observe(lanes, actions, step_rewards)
            active = still
        if not has_success:
            del out["success"]

    def close(self) -> None:
        for pool in self._envs.values():
            for env in pool:
                env.close()
        self._envs.clear()


def _evenly_spaced(index: np.ndarray) -> slice | None:
    """``index`` as a slice (``start + step * arange(len)``, step >= 1), or None."""
    step = int(index[1] - index[0]) if len(index) > 1 else 1
    if step < 1 or not np.array_equal(index, index[0] + step * np.arange(len(index))):
        return None
    return slice(int(index[0]), int(index[0]) + step * (len(index) - 1) + 1, step)


def _lane_carry(lane_items: list[WorkItem], spec: PolicySpec) -> dict[str, torch.Tensor] | None:
    """The lanes' starting states (recurrent): each item's carry, a new trial where it has none."""
    if all(it.carry is None for it in lane_items):
        return None
    zero = {"h": np.zeros(spec.gru_size, np.float32), "prev_action": np.zeros(spec.act_dim, np.float32),
            "prev_reward": np.zeros((), np.float32)}
    return {k: torch.from_numpy(np.stack([(it.carry or zero)[k] for it in lane_items])) for k in CARRY_KEYS}


def _empty(rows: tuple[int, int], steps: int, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Zeroed buffers (*rows, T, ...), rows = (items, episodes), that a rollout fills in."""
    return {
        "obs": np.zeros((*rows, steps, obs_dim), np.float32),
        "actions": np.zeros((*rows, steps, act_dim), np.float32),
        "rewards": np.zeros((*rows, steps), np.float32),
        "mean": np.zeros((*rows, steps, act_dim), np.float32),  # the policy's, for the log-probs
        "std": np.ones((*rows, steps, act_dim), np.float32),
        "terminated": np.zeros((*rows, steps), bool),
        "truncated": np.zeros((*rows, steps), bool),
        "mask": np.zeros((*rows, steps), bool),
        "success": np.zeros((*rows, steps), np.float32),
        "last_obs": np.zeros((*rows, obs_dim), np.float32),
    }
