"""Optional dependencies behind extras: a missing one fails at use, naming what to install.

``pip install lychee-rerank`` is the light client (inputs, ``RemoteReranker``, the adapters and the
plugins); everything heavier comes with an extra. A missing extra is a :class:`MissingExtraError`: an
``ImportError`` (so ``except ImportError`` keeps working) that is also a ``LycheeError``, so the command
line and the examples print it as one line instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from types import ModuleType

from lychee_rerank.core.errors import LycheeError


class MissingExtraError(LycheeError, ImportError):
    """A module that comes with an extra is not installed.

    Attributes:
        module: The module that could not be imported.
        extra: The extra that installs it.
    """

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module!r} is not installed; it comes with the {extra!r} extra: {install_command([extra])}",
            name=module,
        )
        self.module = module
        self.extra = extra


def install_command(extras: list[str]) -> str:
    """The ``pip install`` line for some extras.

    Example:
        >>> install_command(["langchain", "local"])
        "pip install 'lychee-rerank[langchain,local]'"
    """
    return f"pip install 'lychee-rerank[{','.join(extras)}]'"


def require(module: str, extra: str) -> ModuleType:
    """Imports ``module``, or raises a MissingExtraError that names ``pip install 'lychee-rerank[extra]'``.

    Example:
        >>> require("json", "server").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(module, extra) from error


def exit_unless_installed(program: str, needs: Mapping[str, str]) -> None:
    """For a script's first lines: exits with status 2 and one line naming the extras when a module is missing.

    Only looks modules up, so a script can call it before its own imports without loading them twice.

    Args:
        program: What to call the script in the message, e.g. ``examples/langchain_rag.py``.
        needs: Module name -> the extra that installs it, e.g. ``{"langchain_core": "langchain"}``.

    Example:
        >>> exit_unless_installed("example.py", {"json": "server"})  # present: returns
    """
    missing = {module: extra for module, extra in needs.items() if not _installed(module)}
    if missing:
        extras = sorted(set(missing.values()))
        print(
            f"error: {program} needs {', '.join(sorted(missing))}: {install_command(extras)}",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module without a spec
        return False
