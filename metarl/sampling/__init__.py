"""Turning (tasks, policy parameters) into EpisodeBatch."""

from .batch import EpisodeBatch
from .sampler import Sampler, SamplerError, WorkerError
from .worker import RolloutWorker, WorkItem

__all__ = ["EpisodeBatch", "RolloutWorker", "Sampler", "SamplerError", "WorkerError", "WorkItem"]
