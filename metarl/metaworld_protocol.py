"""Meta-World's own meta-learning evaluation (``metaworld.evaluation.metalearning_evaluation``)
run on a metarl learner, so results compare with published ML1/ML10/ML45 numbers.

The protocol: Meta-World's test vector env holds ``meta_batch_size`` envs; the test goals
of each test class (the first ``goals_per_class`` of its 50) are dealt out among that
class's envs. In each of ``num_evals`` rounds every env moves to its next goal, the agent
acts for ``adaptation_episodes`` episodes per env and adapts (``adaptation_steps`` times),
then success is measured over ``evaluation_episodes`` episodes per test class with
terminate-on-success. With ``num_evals = classes * goals_per_class / meta_batch_size`` (the
default) every test goal is visited exactly once.

Defaults are Meta-World+'s settings for each benchmark (:data:`PROTOCOL_DEFAULTS`). The
envs are metarl's bit-identical fast classes (``tasks.options.fast``), stepped by
:class:`ShardedVectorEnv` on all cores; its results equal a ``SyncVectorEnv``'s, so the
numbers do not depend on the number of workers.

Note what Meta-World's ``evaluation`` counts: the first ``evaluation_episodes`` episodes
*to end* per test class, across all of the class's envs. Episodes end early on success, so
with more envs per class than counted episodes, successes are counted first (ML1: 10 envs,
3 counted episodes per round). That is the protocol as published; metarl's own
``metarl evaluate`` (the ``adaptation`` rows of eval.json) counts every episode.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from metarl.envs import Task
from metarl.errors import ConfigError
from metarl.policies import gaussian_log_prob
from metarl.policies.acting import Acting, Actor
from metarl.sampling import EpisodeBatch
from metarl.sampling.sampler import stop_processes
from metarl.seeding import collection_seed

PROTOCOL_SOURCE = ("Meta-World+ (arXiv 2505.11289), Farama metaworld-algorithms: "
                   "envs/metaworld.py MetaworldMetaLearningConfig and "
                   "examples/meta_learning/{maml_trpo_ml1,rl2_ml10,maml_trpo_ml45_v1}.py")
PROTOCOL_DEFAULTS: dict[str, dict[str, int]] = {
    # meta-batch 10, 50 test goals: 5 rounds, each of the 50 goals once (maml_trpo_ml1.py).
    "ml1": {"meta_batch_size": 10, "goals_per_class": 50},
    # meta-batch 20, 40 goals per test class (the config's default; metalearning_evaluation's
    # own comment "40 goals per test task and meta batch size of 20"): 10 rounds.
    "ml10": {"meta_batch_size": 20, "goals_per_class": 40},
    "ml25": {"meta_batch_size": 20, "goals_per_class": 40},
    # meta-batch 45, 45 goals per test class (maml_trpo_ml45_v1.py): 5 rounds.
    "ml45": {"meta_batch_size": 45, "goals_per_class": 45},
}
EPISODE_DEFAULTS = {"adaptation_steps": 1, "adaptation_episodes": 10, "evaluation_episodes": 3}
EVALUATION_STARTS = ("adapted", "continued")
"""Where a recurrent policy's evaluation episodes start: ``adapted`` (the default) each from
the state the adaptation episodes left, as the agents Meta-World's protocol was written for
do (it calls ``agent.reset`` at every evaluation episode's end; garage's
``RL2AdaptedPolicy``, metaworld-algorithms' RL²); ``continued`` from where the previous
evaluation episode ended (metarl's default before 2026-12-07). A feed-forward policy has no
state to carry, so for it the two are the same."""
GOALS_PER_CLASS = 50  # metaworld._N_GOALS


def protocol_settings(benchmark: str, num_test_classes: int, meta_batch_size: int | None = None,
                      goals_per_class: int | None = None, num_evals: int | None = None,
                      evaluation_start: str = "adapted", **episodes: int | None) -> dict[str, Any]:
    """The protocol's settings for ``benchmark`` (``ml1``, ``ml10``, ...): Meta-World+'s
    defaults where an argument is None, checked so that Meta-World's vector env can be built,
    and where recurrent policies start their evaluation episodes (:data:`EVALUATION_STARTS`).

    Raises ConfigError (one line, naming the valid values) for a combination Meta-World
    would reject or one that does not visit the goals evenly.
    """
    if benchmark not in PROTOCOL_DEFAULTS:
        raise ConfigError(f"--protocol metaworld needs a Meta-World benchmark; got {benchmark!r}, "
                          f"valid: {', '.join(PROTOCOL_DEFAULTS)}")
    base = PROTOCOL_DEFAULTS[benchmark]
    mbs = base["meta_batch_size"] if meta_batch_size is None else meta_batch_size
    goals = base["goals_per_class"] if goals_per_class is None else goals_per_class
    if not 1 <= goals <= GOALS_PER_CLASS:
        raise ConfigError(f"--goals-per-class must be in 1..{GOALS_PER_CLASS}, got {goals}")
    valid = [m for m in range(num_test_classes, num_test_classes * goals + 1, num_test_classes)
             if goals % (m // num_test_classes) == 0]
    if mbs not in valid:
        raise ConfigError(f"--meta-batch-size {mbs} does not deal {goals} goals per class evenly over "
                          f"{num_test_classes} test class(es); valid: {', '.join(map(str, valid))}")
    rounds = num_test_classes * goals // mbs
    out = {"meta_batch_size": mbs, "goals_per_class": goals,
           "num_evals": rounds if num_evals is None else num_evals}
    for key, default in EPISODE_DEFAULTS.items():
        out[key] = default if episodes.get(key) is None else int(episodes[key])  # type: ignore[arg-type]
    for key in ("num_evals", *EPISODE_DEFAULTS):
        if out[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {out[key]}")
    if evaluation_start not in EVALUATION_STARTS:
        raise ConfigError(f"--evaluation-start must be one of {', '.join(EVALUATION_STARTS)}, got {evaluation_start!r}")
    return out | {"evaluation_start": evaluation_start}


def env_layout(test_tasks: dict[str, list[Any]], meta_batch_size: int,
               goals_per_class: int) -> list[tuple[str, list[Any]]]:
    """(class name, its goals) for each env of the protocol's vector env, in Meta-World's
    order: per test class, its first ``goals_per_class`` goals dealt round-robin over
    ``meta_batch_size / classes`` envs (``metaworld._make_ml_envs_inner``)."""
    per_class = meta_batch_size // len(test_tasks)
    return [(name, tasks[:goals_per_class][i::per_class])
            for name, tasks in test_tasks.items() for i in range(per_class)]


def protocol_env_fns(dist: Any, settings: dict[str, Any],
                     max_episode_steps: int | None = None) -> list[Callable[[], gym.Env]]:
    """Constructors of the protocol's test envs, as ``gym.make_vec("Meta-World/ML*-test")``
    builds them (same goals, seeds, wrappers and settings), on ``dist``'s env classes (the
    fast classes unless ``tasks.options.fast=false``)."""
    from metaworld import _init_each_env

    from metarl.envs.metaworld import metaworld_task
    from metarl.envs.metaworld_fast import env_class

    # dist's test pool is the benchmark's test_tasks in their order (grouped by class, the
    # classes in test_classes' order): no second build of the benchmark (ML45's takes tens of seconds).
    by_class: dict[str, list[Any]] = {}
    for task in dist.tasks("test"):
        by_class.setdefault(task.params["env_name"], []).append(metaworld_task(task))
    return [partial(_init_each_env, env_cls=env_class(name, dist.fast), tasks=tasks, seed=dist.seed,
                    terminate_on_success=True, task_select="pseudorandom",
                    reward_function_version=dist.reward_function_version,
                    max_episode_steps=max_episode_steps)
            for name, tasks in env_layout(by_class, settings["meta_batch_size"], settings["goals_per_class"])]


# ----------------------------------------------------------------------------- vector env


def _shard_main(conn: Any, env_fns: list[Callable[[], gym.Env]], autoreset_mode: Any) -> None:
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=autoreset_mode)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            method, args, kwargs = msg
            conn.send(getattr(envs, method)(*args, **kwargs))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        envs.close()


def merge_infos(parts: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """The info dict a ``SyncVectorEnv`` over all envs returns, from its shards' infos
    (each a dict of per-env arrays with ``_key`` masks, nested for ``final_info``)."""
    total, offsets = sum(sizes), np.cumsum([0, *sizes[:-1]])
    out: dict[str, Any] = {}
    keys = dict.fromkeys(k for part in parts for k in part)
    for key in keys:
        present = [(part[key], off, n) for part, off, n in zip(parts, offsets, sizes, strict=True) if key in part]
        if isinstance(present[0][0], dict):
            out[key] = merge_infos([part.get(key, {}) for part in parts], sizes)
            continue
        first = present[0][0]
        array = (np.full(total, None, dtype=object) if first.dtype == object
                 else np.zeros((total, *first.shape[1:]), dtype=first.dtype))
        for value, off, n in present:
            array[off:off + n] = value
        out[key] = array
    return out


class ShardedVectorEnv(gym.vector.VectorEnv):
    """A vector env whose sub-envs are split over worker processes, each stepping its
    share as a ``SyncVectorEnv``; observations, rewards, flags and infos are those of one
    ``SyncVectorEnv`` over all ``env_fns`` (same order, same autoreset), so results do
    not depend on ``num_workers``. ``num_workers=1`` steps in this process.

    ``last_rewards`` holds the rewards of the latest ``step`` (zeros before the first) and
    ``last_final_obs`` each env's final observation if that step ended its episode (None
    otherwise): what Meta-World's ``evaluation`` steps but never shows its agent.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], num_workers: int = 0,
                 autoreset_mode: Any = gym.vector.AutoresetMode.SAME_STEP) -> None:
        n = len(env_fns)
        num_workers = min(num_workers or os.cpu_count() or 1, n)
        self.num_envs = n
        self.autoreset_mode = autoreset_mode
        bounds = np.linspace(0, n, num_workers + 1).round().astype(int)
        self.sizes = [int(b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._local = None
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        if num_workers == 1:
            self._local = gym.vector.SyncVectorEnv(list(env_fns), autoreset_mode=autoreset_mode)
            probe = self._local
        else:
            ctx = mp.get_context("spawn")
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_shard_main, args=(child, list(env_fns[a:b]), autoreset_mode),
                                   daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            probe = None
        first = env_fns[0]()
        try:
            self.single_observation_space = first.observation_space
            self.single_action_space = first.action_space
        finally:
            first.close()
        if probe is not None:
            self.observation_space, self.action_space = probe.observation_space, probe.action_space
        else:
            self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, n)
            self.action_space = gym.vector.utils.batch_space(self.single_action_space, n)
        self.metadata = {"autoreset_mode": autoreset_mode}
        self.last_rewards = np.zeros(n, np.float32)
        self.last_final_obs: list[np.ndarray | None] = [None] * n

    def _all(self, method: str, args_per_shard: Sequence[tuple] | None = None, **kwargs: Any) -> list[Any]:
        if self._local is not None:
            return [getattr(self._local, method)(*(args_per_shard[0] if args_per_shard else ()), **kwargs)]
        try:
            for i, conn in enumerate(self._conns):
                conn.send((method, args_per_shard[i] if args_per_shard else (), kwargs))
            return [conn.recv() for conn in self._conns]
        except (EOFError, OSError) as err:
            codes = [p.exitcode for p in self._procs]
            raise RuntimeError(f"a Meta-World protocol worker died during {method} (exit codes {codes})") from err

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            raise ValueError("ShardedVectorEnv.reset does not take a seed; seed the envs when making them")
        parts = self._all("reset", options=options)
        return np.concatenate([o for o, _ in parts]), merge_infos([i for _, i in parts], self.sizes)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        offsets = np.cumsum([0, *self.sizes])
        parts = self._all("step", [(actions[a:b],) for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
        obs, rew, term, trunc, infos = zip(*parts, strict=True)
        rewards = np.concatenate(rew)
        merged = merge_infos(infos, self.sizes)
        self.last_rewards = rewards.astype(np.float32)
        # SAME_STEP autoreset: an ended env's returned observation is its next episode's first
        final = merged.get("final_obs")
        self.last_final_obs = [None] * self.num_envs if final is None else list(final)
        return np.concatenate(obs), rewards, np.concatenate(term), np.concatenate(trunc), merged

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return tuple(r for part in self._all("call", [(name, *args)] * len(self.sizes), **kwargs)
                     for r in part)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(r for part in self._all("get_attr", [(name,)] * len(self.sizes)) for r in part)

    def close_extras(self, **kwargs: Any) -> None:
        if self._local is not None:
            self._local.close()
        stop_processes(self._conns, self._procs, timeout=10)


# ----------------------------------------------------------------------------- agents


class LearnerAgent:
    """Meta-World's ``MetaLearningAgent`` for any :class:`~metarl.algos.MetaLearner`.

    Each env of the protocol's vector env is one task of the learner's adaptation state and
    one lane of an :class:`~metarl.policies.acting.Actor`. ``init`` starts a new adaptation
    (``init_adaptation``); the first ``episodes`` episodes of each env are recorded and
    ``adapt`` hands them, with the actor's carried state, to the learner's ``adapt``.

    A recurrent policy (RL², VariBAD) reads the previous step's reward as an input at every
    step, as it did in training. Meta-World's ``evaluation`` calls only ``eval_action(obs)``
    and ``reset(dones)``, so the agent reads the rewards of the step it acted on from the
    vector env's ``last_rewards`` (Meta-World+'s RL² sees them through its env wrapper's
    observation). Without them the evaluation episodes ran on the last adaptation reward,
    frozen. Likewise an adaptation episode's final observation (its batch's ``last_obs``,
    the next state of its last transition) comes from ``last_final_obs``.

    With ``evaluation_start="adapted"`` (the default) a recurrent policy starts each
    evaluation episode from the state (GRU state, previous action and reward) the adaptation
    left, as garage's and metaworld-algorithms' RL² agents do; with ``"continued"`` it goes on
    from where the previous evaluation episode ended.
    """

    def __init__(self, learner: Any, envs: ShardedVectorEnv, episodes: int, seed: int = 0,
                 evaluation_start: str = "adapted") -> None:
        """``envs``: the protocol's vector env (its size, action bounds and what its latest
        step returned beyond the observations)."""
        self.learner, self.num_envs, self.episodes, self.seed = learner, envs.num_envs, episodes, seed
        self.from_adapted = evaluation_start == "adapted"
        space = envs.single_action_space
        self.bounds, self.envs = (space.low, space.high), envs
        self.spec = learner.policy_spec
        self.tasks = [Task("metaworld-protocol", {"env": i}) for i in range(self.num_envs)]
        self.lanes = np.arange(self.num_envs)
        self.rng = np.random.default_rng(seed)
        self.rounds = 0
        self.init()

    def init(self) -> None:
        """A new round: each round's adaptation draws from its own seed."""
        self.rounds += 1
        self.state = self.learner.init_adaptation(self.tasks, collection_seed(self.seed, self.rounds))
        self._act_with(self.learner.acting(self.state))
        self.new = np.ones(self.num_envs, np.float32)
        self.pending: torch.Tensor | None = None  # an evaluation action whose reward is not yet observed
        self.adapted: dict[str, torch.Tensor] | None = None  # the state evaluation episodes start from
        self.restart = np.zeros(self.num_envs, bool)  # lanes whose next step starts from it
        self._clear()

    def _act_with(self, acting: Acting) -> None:
        param_sets, groups = acting.param_sets(self.num_envs)
        cpu = [{k: v.detach().cpu() for k, v in p.items()} for p in param_sets]
        carry = None if acting.carry is None else {k: v.cpu() for k, v in acting.carry.items()}
        self.actor = Actor(self.spec, cpu, groups, carry)

    def _clear(self) -> None:
        self.episodes_done: list[list[dict[str, list]]] = [[] for _ in range(self.num_envs)]
        self.current = [_new_episode() for _ in range(self.num_envs)]

    def _act(self, observations: np.ndarray, stochastic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, std = self.actor.act(self.lanes, torch.as_tensor(observations, dtype=torch.float32), self.new)
            actions = mean + std * torch.from_numpy(self.rng.standard_normal(mean.shape, dtype=np.float32)) \
                if stochastic else mean
            logp = gaussian_log_prob(mean, std, actions)
        self.new = np.zeros(self.num_envs, np.float32)
        return actions, logp

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        actions, logp = self._act(observations, stochastic=True)
        return self._env_actions(actions), {"log_probs": logp.numpy(), "actions": actions.numpy()}

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        if self.pending is not None:  # the step since the last call: its action and reward
            self.actor.observe(self.lanes, self.pending, self.envs.last_rewards)
        if self.adapted is not None and self.restart.any():
            self.actor.restore(np.flatnonzero(self.restart), self.adapted)
            self.restart[:] = False
        actions, _ = self._act(observations, stochastic=False)
        self.pending = actions
        return self._env_actions(actions)

    def _env_actions(self, actions: torch.Tensor) -> np.ndarray:
        return self.spec.env_action(actions.numpy(), *self.bounds).astype(np.float64)

    def step(self, timestep: Any) -> None:
        actions = torch.as_tensor(timestep.aux_policy_outputs["actions"])
        self.actor.observe(self.lanes, actions, np.asarray(timestep.reward, np.float32))
        self.new = np.logical_or(timestep.terminated, timestep.truncated).astype(np.float32)
        for i in range(self.num_envs):
            if len(self.episodes_done[i]) >= self.episodes:
                continue
            ep = self.current[i]
            ep["obs"].append(timestep.observation[i])
            ep["actions"].append(timestep.aux_policy_outputs["actions"][i])
            ep["rewards"].append(timestep.reward[i])
            ep["log_probs"].append(timestep.aux_policy_outputs["log_probs"][i])
            ep["terminated"].append(bool(timestep.terminated[i]))
            if timestep.terminated[i] or timestep.truncated[i]:
                ep["last_obs"] = self.envs.last_final_obs[i]
                self.episodes_done[i].append(ep)
                self.current[i] = _new_episode()

    def adapt(self) -> None:
        self.pending = None
        batch = _to_batch(self.episodes_done, self.episodes, self.tasks, self.actor.carry())
        self.state = self.learner.adapt(self.state, batch)
        self._act_with(self.learner.acting(self.state))
        self.adapted = self.actor.carry() if self.from_adapted else None
        self._clear()

    def reset(self, env_mask: np.ndarray) -> None:
        # A new episode, not a new adaptation: the flag goes up; the state stays, or with
        # evaluation_start="adapted" goes back to the adapted one at the episode's first step.
        self.new = np.maximum(self.new, np.asarray(env_mask, np.float32))
        if self.from_adapted:
            self.restart |= np.asarray(env_mask, bool)


class _CountRounds:
    """Passes everything to ``agent``; ticks ``bar`` when a protocol round begins."""

    def __init__(self, agent: Any, bar: tqdm) -> None:
        self._agent, self._bar, self._started = agent, bar, False

    def init(self) -> None:
        if self._started:
            self._bar.update()
        self._started = True
        self._agent.init()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)


def _new_episode() -> dict[str, list]:
    return {"obs": [], "actions": [], "rewards": [], "log_probs": [], "terminated": []}


def _to_batch(episodes: list[list[dict[str, list]]], count: int, tasks: list[Task],
              carry: dict[str, torch.Tensor] | None) -> EpisodeBatch:
    n, t = len(episodes), max(len(ep["obs"]) for eps in episodes for ep in eps[:count])
    o, a = len(episodes[0][0]["obs"][0]), len(episodes[0][0]["actions"][0])
    arrays = {"obs": np.zeros((n, count, t, o), np.float32), "actions": np.zeros((n, count, t, a), np.float32),
              "rewards": np.zeros((n, count, t), np.float32), "log_probs": np.zeros((n, count, t), np.float32),
              "terminated": np.zeros((n, count, t), bool), "truncated": np.zeros((n, count, t), bool),
              "mask": np.zeros((n, count, t), bool)}
    last_obs = np.zeros((n, count, o), np.float32)
    for i, eps in enumerate(episodes):
        for e, ep in enumerate(eps[:count]):
            last_obs[i, e] = ep["last_obs"]
            length = len(ep["obs"])
            for key in ("obs", "actions", "rewards", "log_probs"):
                arrays[key][i, e, :length] = np.asarray(ep[key])
            arrays["mask"][i, e, :length] = True
            arrays["terminated"][i, e, length - 1] = ep["terminated"][-1]
            arrays["truncated"][i, e, length - 1] = not ep["terminated"][-1]
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return EpisodeBatch(**tensors, last_obs=torch.from_numpy(last_obs), success=None, tasks=tasks, carry=carry)


def run_protocol(learner: Any, dist: Any, settings: dict[str, Any], seed: int = 0,
                 max_episode_steps: int | None = None, num_workers: int = 0) -> dict[str, Any]:
    """Meta-World's ``metalearning_evaluation`` on the test split of ``dist`` (a Meta-World
    task distribution) with ``settings`` from :func:`protocol_settings`. A learner whose
    policy carries no state from one episode to the next starts every evaluation episode
    from its adapted policy whatever ``evaluation_start`` asks, and is recorded so.

    Returns ``{"success_rate", "return", "per_task_success", "wall_time_s", "settings"}``.
    """
    from metaworld.evaluation import metalearning_evaluation

    if not learner.adapts_on_batch:
        raise ConfigError(f"Meta-World's protocol hands the learner the episodes to adapt on; "
                          f"{type(learner).__name__} adapts on episodes of its own, so the protocol "
                          "cannot evaluate it")
    if not learner.policy_spec.recurrent:  # no state to carry: every episode starts adapted
        settings = settings | {"evaluation_start": "adapted"}
    start = time.perf_counter()
    envs = ShardedVectorEnv(protocol_env_fns(dist, settings, max_episode_steps), num_workers)
    agent = LearnerAgent(learner, envs, settings["adaptation_episodes"], seed, settings["evaluation_start"])
    episode_keys = ("num_evals", *EPISODE_DEFAULTS)
    bar = tqdm(total=settings["num_evals"], desc="Meta-World protocol", unit="round", disable=None,
               dynamic_ncols=True)
    try:
        success, mean_return, per_task = metalearning_evaluation(
            _CountRounds(agent, bar), envs, **{k: settings[k] for k in episode_keys})
        bar.update()
    finally:
        bar.close()
        envs.close()
    return {"success_rate": float(success), "return": float(mean_return),
            "per_task_success": {k: float(v) for k, v in per_task.items()},
            "wall_time_s": time.perf_counter() - start,
            "settings": settings | {"benchmark": dist.name, "benchmark_seed": dist.seed, "seed": seed,
                                    "max_episode_steps": max_episode_steps, "fast": dist.fast,
                                    "reward_function_version": dist.reward_function_version,
                                    "source": PROTOCOL_SOURCE}}
