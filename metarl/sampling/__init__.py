"""Turning (tasks, policy parameters) into EpisodeBatch."""

from .batch import EpisodeBatch
from .sampler import Sampler, SamplerError
from .worker import RolloutWorker, WorkItem

__all__ = ["EpisodeBatch", "RolloutWorker", "Sampler", "SamplerError", "WorkItem"]
