"""Every random stream of a run, derived from one seed by name.

A run's randomness comes from here and nowhere else, each stream a pure function of the
seed (and the iteration), so a resumed run repeats it exactly. The integers in
:data:`STREAM_IDS` are the values earlier versions used inline, kept so that runs
reproduce across versions; a consequence is that a few streams coincide by key:
``train_tasks(7)`` and ``eval_tasks()``, ``train_tasks(i, draw=3)`` and ``video_task(i)``,
``collection(i, 99)`` and ``video_rollout(i)``, ``eval_env(0)`` and ``eval_collection()``,
and ``torch_init`` and ``learner`` (the same integer). None of these correlates anything
that matters: a training draw and the held-out set come from different pools (or, where
both splits are the same two tasks, each takes both), the video's draws pick what to
film, and no iteration has a 99th collection. New streams take keys of their own.
"""

from __future__ import annotations

import numpy as np

STREAM_IDS = {"eval_tasks": 7, "video_task": 3, "video_rollout": 99}
EVAL_COLLECTION_STRIDE = 1000
"""An evaluation with seed ``s`` rolls its episodes with collection seed ``s * 1000``."""


def collection_seed(*key: int) -> int:
    """One collection's seed from integer ``key`` (a ``SeedSequence`` of it)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


class Seeds:
    """The named streams of a run with seed ``seed``.

    - ``train_tasks(i)``: the generator that draws iteration ``i``'s training tasks;
    - ``collection(i, phase)``: the seed of iteration ``i``'s ``phase``-th collection;
    - ``eval_tasks()``: the generator of the held-out task set (drawn once per run);
    - ``eval_collection()``: the seed every evaluation of this seed rolls its episodes with;
    - ``torch_init``: the seed of the policy's initial parameters;
    - ``learner``: the seed of a learner's own generators (minibatch order, SB3's seed).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    @property
    def torch_init(self) -> int:
        return self.seed

    @property
    def learner(self) -> int:
        return self.seed

    def train_tasks(self, iteration: int, draw: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, iteration] + ([draw] if draw else []))

    def collection(self, iteration: int, phase: int) -> int:
        return collection_seed(self.seed, iteration, phase)

    def eval_tasks(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, STREAM_IDS["eval_tasks"]])

    def eval_collection(self) -> int:
        return self.seed * EVAL_COLLECTION_STRIDE

    def eval_env(self, task_index: int) -> int:
        """Seed of held-out task ``task_index``'s own env (learners that roll out alone)."""
        return self.seed * EVAL_COLLECTION_STRIDE + task_index

    def video_task(self, iteration: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, iteration, STREAM_IDS["video_task"]])

    def video_rollout(self, iteration: int) -> int:
        return collection_seed(self.seed, iteration, STREAM_IDS["video_rollout"])
