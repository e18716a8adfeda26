"""Task distributions by name: ``make("ml1/pick-place-v3")``, ``names()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core import TaskDistribution
from .driving import CarTasks, HighwayParking
from .locomotion import Locomotion
from .metaworld import MetaWorld, ml1_env_names
from .navigation import Navigation2D

_FAMILIES: dict[str, Callable[..., TaskDistribution]] = {
    "nav2d": Navigation2D,
    "halfcheetah-vel": lambda **kw: Locomotion(name="halfcheetah-vel", **kw),
    "halfcheetah-dir": lambda **kw: Locomotion(name="halfcheetah-dir", **kw),
    "ant-dir": lambda **kw: Locomotion(name="ant-dir", **kw),
    "ant-goal": lambda **kw: Locomotion(name="ant-goal", **kw),
    "car-goal": lambda **kw: CarTasks(name="car-goal", **kw),
    "car-speed": lambda **kw: CarTasks(name="car-speed", **kw),
    "highway-parking": HighwayParking,
    "ml10": lambda **kw: MetaWorld(benchmark="ml10", env_name=None, **kw),
    "ml25": lambda **kw: MetaWorld(benchmark="ml25", env_name=None, **kw),
    "ml45": lambda **kw: MetaWorld(benchmark="ml45", env_name=None, **kw),
}


VERSIONED_OPTIONS: dict[str, dict[str, Any]] = {"nav2d": {"unit_actions": False},
                                                 **{b: {"balanced": False} for b in ("ml10", "ml25", "ml45")}}
"""Options a family gained after runs had been saved without them, with the value those
runs ran with: a run resumed or evaluated from such a checkpoint keeps it, and every new
run records the option's current value in its config (``metarl.config.with_versioned_options``)."""


def names() -> list[str]:
    """Every task distribution name, ML1's 50 environments included."""
    return list(_FAMILIES) + [f"ml1/{env}" for env in ml1_env_names()]


def make(name: str, **options: Any) -> TaskDistribution:
    """The task distribution called ``name``, built with ``options`` (pool sizes, seed, ...).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or option.
    """
    if name.startswith("ml1/"):
        env_name = name.removeprefix("ml1/")
        if env_name not in ml1_env_names():
            raise ValueError(f"unknown Meta-World ML1 environment {env_name!r}; valid: "
                             f"{', '.join(ml1_env_names())}")
        factory: Callable[..., TaskDistribution] = lambda **kw: MetaWorld(  # noqa: E731
            benchmark="ml1", env_name=env_name, **kw)
    elif name in _FAMILIES:
        factory = _FAMILIES[name]
    else:
        raise ValueError(f"unknown task distribution {name!r}; valid: {', '.join(_FAMILIES)}, "
                         "ml1/<env> (see `metarl tasks`)")
    try:
        return factory(**options)
    except TypeError as err:  # an option the family does not take
        raise ValueError(f"invalid option for task distribution {name!r}: {err}") from None
