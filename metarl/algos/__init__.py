"""Meta-learners, one file each; importing this package registers them (see ``base``)."""

from .base import (
    AlgoConfig,
    Algorithm,
    LearnerSetup,
    MetaLearner,
    NoExtraState,
    TrainContext,
    algorithm,
    algorithm_names,
    check_positive,
    register,
)
from .maml import MamlConfig, MamlLearner
from .pearl import PearlConfig, PearlLearner
from .rl2 import Rl2Config, Rl2Learner
from .sb3 import Sb3Config, Sb3Learner

__all__ = ["AlgoConfig", "Algorithm", "LearnerSetup", "MamlConfig", "MamlLearner", "MetaLearner", "NoExtraState",
           "PearlConfig", "PearlLearner", "Rl2Config", "Rl2Learner", "Sb3Config", "Sb3Learner", "TrainContext",
           "algorithm", "algorithm_names", "check_positive", "register"]
