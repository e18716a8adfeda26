"""Meta-learners, one file each."""

from .maml import MamlLearner
from .rl2 import Rl2Learner

__all__ = ["MamlLearner", "Rl2Learner"]
