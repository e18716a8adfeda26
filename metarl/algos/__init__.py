"""Meta-learners, one file each; importing this package imports every module in it, and
each registers its algorithms (see ``base``), so a new learner's file is found with no
edit here."""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):  # the learners not named above register on import
    importlib.import_module(f"{__name__}.{_module.name}")
