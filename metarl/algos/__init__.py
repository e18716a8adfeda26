"""Meta-learners, one file each."""

from .maml import MamlLearner

__all__ = ["MamlLearner"]
