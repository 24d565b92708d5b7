"""Missing optional dependencies name the extra to install."""

from __future__ import annotations

import pytest

from lychee_rerank.core.extras import require


def test_present_module_is_returned() -> None:
    assert require("json", "server").dumps([1]) == "[1]"


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install 'lychee-rerank\[qdrant\]'"):
        require("no_such_module_for_lychee_tests", "qdrant")
