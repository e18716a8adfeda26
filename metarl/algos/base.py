"""The meta-learner interface, what the trainer hands a learner, and the algorithm registry.

A new algorithm is one file under ``metarl/algos/`` (plus its configs): a config dataclass
derived from :class:`AlgoConfig`, a class that implements :class:`MetaLearner`, and a
:func:`register` call that names them. The trainer, the evaluation loop, Meta-World's
protocol agent and video recording use a learner only through this interface::

    learner = algorithm(name).build(setup)      # LearnerSetup: config, tasks, policy settings, ...
    metrics = learner.train_step(ctx)           # TrainContext: sampler, seeds, tasks, run directory
    state = learner.init_adaptation(tasks, seed)  # theta | a new trial | a prior over z
    batch = sampler.collect(tasks, learner.acting(state), learner.adaptation_episodes, ...)
    state = learner.adapt(state, batch)         # a gradient step | the carried state | a posterior
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from metarl.envs import Task, TaskDistribution
from metarl.errors import ConfigError
from metarl.policies import PolicySpec
from metarl.policies.acting import Acting
from metarl.rundir import RunDir
from metarl.sampling import EpisodeBatch, Sampler
from metarl.seeding import Seeds


@dataclass(frozen=True)
class AlgoConfig:
    """Base of every algorithm's hyper-parameters; ``name`` selects the algorithm."""

    name: str = "maml_trpo"


def check_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` > 0."""
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class LearnerSetup:
    """What a learner is built from (filled in by the trainer from the run's config).

    ``policy`` is the run's ``policy`` section (hidden sizes, activation, initial std, ...);
    ``load_run`` reads another run's final checkpoint, e.g. to start from its weights.
    """

    algo: AlgoConfig
    dist: TaskDistribution
    policy: Any
    device: torch.device
    seeds: Seeds
    episodes_per_task: int
    max_steps: int
    run_dir: RunDir
    load_run: Callable[[str], dict[str, Any]]

    @property
    def dims(self) -> tuple[int, int]:
        """(observation size, action size) of the distribution's flat spaces."""
        obs, act = self.dist.spaces
        return int(torch.Size(obs.shape).numel()), int(torch.Size(act.shape).numel())


@dataclass
class TrainContext:
    """One meta-iteration's services: a learner picks its tasks, collects what it needs
    with :meth:`collect` (timed and counted here) and trains as it likes.

    Learners that roll out on their own (SB3) report their steps with :meth:`add_env_steps`.
    """

    iteration: int
    dist: TaskDistribution
    sampler: Sampler | None
    seeds: Seeds
    meta_batch_size: int
    episodes_per_task: int
    max_steps: int
    run_dir: RunDir
    env_steps: int = 0
    sample_time_s: float = 0.0

    def train_tasks(self, n: int | None = None, draw: int = 0) -> list[Task]:
        """This iteration's training tasks (``meta_batch_size`` unless ``n``); ``draw`` > 0
        gives another set, for a learner that collects on several in one iteration."""
        return self.dist.sample(n or self.meta_batch_size, "train", self.seeds.train_tasks(self.iteration, draw))

    def collect(self, tasks: Sequence[Task], acting: Acting, phase: int, episodes: int | None = None) -> EpisodeBatch:
        """Roll ``episodes`` (default ``episodes_per_task``) episodes per task with ``acting``;
        ``phase`` numbers the iteration's collections (each gets its own seed)."""
        t0 = time.perf_counter()
        batch = self.sampler.collect(tasks, acting, episodes or self.episodes_per_task,
                                     self.seeds.collection(self.iteration, phase), self.max_steps)
        self.sample_time_s += time.perf_counter() - t0
        self.env_steps += batch.env_steps
        return batch

    def add_env_steps(self, steps: int) -> None:
        self.env_steps += steps


@runtime_checkable
class MetaLearner(Protocol):
    """A meta-learner.

    ``adaptation_unit``: what one adaptation step is, ``"gradient_steps"`` (MAML) or
    ``"episodes"`` (RL², PEARL: each episode's data updates the state).
    ``adaptation_episodes``: episodes per task collected before each adaptation step.
    ``eval_deterministic``: held-out evaluation (eval.json, the periodic one) acts with the
    policy's mean, as the learner's reference evaluates; otherwise it samples.
    ``trains``: False for learners whose run is their evaluation (fine-tuning baselines).
    ``resumes_exactly``: training continues from a checkpoint as if it had not stopped
    (else the trainer refuses ``resume=true``).
    ``adapts_on_batch``: :meth:`adapt` learns from the batch it is given (else, as SB3's
    fine-tuning on episodes of its own, Meta-World's protocol refuses it).
    ``policy_spec``: the policy workers build to act with :meth:`acting`'s parameters.

    Adaptation states are the learner's own (opaque to callers); :meth:`adapt` returns a
    new one and never changes the learner. Large state that does not belong in the
    checkpoint's ``learner`` entry (a replay buffer) comes from :meth:`extra_state_dict`.
    """

    adaptation_unit: ClassVar[str]
    adaptation_episodes: int
    eval_deterministic: ClassVar[bool]
    resumes_exactly: ClassVar[bool]
    adapts_on_batch: ClassVar[bool]
    trains: bool
    policy_spec: PolicySpec

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """One meta-iteration; returns ``train/return_pre``, ``train/return_post`` (and
        success where the tasks report it) and any ``loss/...`` statistics."""

    def init_adaptation(self, tasks: list[Task], seed: int) -> Any:
        """The state before any data of ``tasks`` has been seen; ``seed`` seeds whatever
        the adaptation draws itself (a sample from a prior, a fine-tuning env)."""

    def acting(self, state: Any) -> Acting:
        """What the policy acts with in ``state``."""

    def adapt(self, state: Any, batch: EpisodeBatch) -> Any:
        """The state after also seeing ``batch`` (episodes of the state's tasks)."""

    def state_dict(self) -> dict[str, Any]:
        """Networks and statistics; the optimisers' state, if any, under ``optimizer`` (the
        trainer saves that entry beside the checkpoint, with :meth:`extra_state_dict`)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``optimizer`` is None in a weights-only checkpoint."""

    def extra_state_dict(self) -> dict[str, Any] | None:
        """State too large for every checkpoint's ``learner`` entry (replay buffers): the
        trainer saves it beside the checkpoint, atomically; None when there is none."""

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state_dict` returned."""


class NoExtraState:
    """Mixin for learners whose whole state is their ``state_dict``."""

    def extra_state_dict(self) -> None:
        return None

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError(f"{type(self).__name__} keeps no extra state, but the checkpoint has some")


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: its config class and how to build its learner."""

    name: str
    config: type[AlgoConfig]
    build: Callable[[LearnerSetup], MetaLearner]


_REGISTRY: dict[str, Algorithm] = {}


def register(names: str | Sequence[str], config: type[AlgoConfig],
             build: Callable[[LearnerSetup], MetaLearner]) -> None:
    """Make ``names`` valid values of ``algo.name``, configured by ``config`` and built by
    ``build(setup)`` (usually the learner class's ``from_setup``)."""
    for name in [names] if isinstance(names, str) else names:
        _REGISTRY[name] = Algorithm(name, config, build)


def algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name``; ConfigError listing the valid names otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown algo.name {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def algorithm_names() -> list[str]:
    return list(_REGISTRY)


def summary_metrics(returns: torch.Tensor, success: torch.Tensor | None, tag: str) -> dict[str, float]:
    """``train/return_{tag}`` (and ``train/success_{tag}``) as means of the given values."""
    out = {f"train/return_{tag}": returns.mean().item()}
    if success is not None:
        out[f"train/success_{tag}"] = success.mean().item()
    return out


def minibatches(n: int, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A random split of ``range(n)`` into ``count`` minibatches of sizes that differ by at
    most one (``n`` of one where ``n < count``): every unit once per epoch, and no runt
    minibatch when ``count`` does not divide ``n``."""
    return torch.randperm(n, generator=generator).tensor_split(max(1, min(count, n)))


def ppo_clip_objective(ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped surrogate, per sample: min(r A, clip(r, 1 - c, 1 + c) A) (maximise it)."""
    return torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def clipped(ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """1.0 where the ratio lies outside [1 - c, 1 + c] (for the clip fraction)."""
    return ((ratio - 1).abs() > clip).float()

