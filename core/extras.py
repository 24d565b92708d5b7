"""Optional dependencies behind extras: a missing one fails at use, naming what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Imports ``module``, or raises an ImportError that names ``pip install 'lychee-rerank[extra]'``.

    Example:
        >>> require("json", "server").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module!r} is not installed; it comes with the {extra!r} extra: pip install 'lychee-rerank[{extra}]'"
        ) from error
