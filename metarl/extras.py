"""Optional dependencies, installed by the package's extras (``pip install 'metarl[ray]'``)."""

from __future__ import annotations

import importlib
import types


class MissingExtraError(ImportError):
    """An optional dependency is not installed. The message names the pip extra that
    installs it; the CLI reports it in one line, as a user error. Any other ImportError
    (one raised inside metarl or inside an installed dependency) is a bug to trace."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(f"{feature} needs {module}, which is not installed: "
                         f"pip install 'metarl[{extra}]'", name=module)
        self.extra = extra


def require(module: str, extra: str, feature: str) -> types.ModuleType:
    """``importlib.import_module(module)``; :class:`MissingExtraError` naming ``extra`` when
    the top-level package of ``module`` is not installed. An ImportError from inside an
    installed package propagates as it is.

    ``feature`` says what needs it, e.g. ``"sampler.backend=ray"``.
    """
    top = module.partition(".")[0]
    try:
        importlib.import_module(top)
    except ModuleNotFoundError as err:
        if err.name != top:
            raise
        raise MissingExtraError(feature, top, extra) from err
    return importlib.import_module(module)
