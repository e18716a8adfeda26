"""Which Sawyer env class to build for a Meta-World task: stock, or metarl's fast path.

The fast path (bit-identical overrides of the hot methods) is tracked in the issue
"Faster Meta-World"; until it covers a class, the stock class is used and this is said
once per process.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

FAST_CLASSES: dict[str, type] = {}
_warned: set[str] = set()


def env_class(env_name: str, fast: bool) -> type:
    """The class to instantiate for ``env_name`` (a Meta-World v3 name)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    stock = ALL_V3_ENVIRONMENTS[env_name]
    if not fast:
        return stock
    if env_name in FAST_CLASSES:
        return FAST_CLASSES[env_name]
    if "fast" not in _warned:
        _warned.add("fast")
        log.info("metarl: no fast Meta-World step path for this metaworld version yet; "
                 "using the stock classes")
    return stock
