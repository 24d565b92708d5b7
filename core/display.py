"""Terminal tables that line up with Chinese and other wide characters."""

from __future__ import annotations

import unicodedata


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: two for wide (CJK) characters, one otherwise.

    Example:
        >>> display_width("衬衫 shirt")
        10
    """
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def cell(text: str | None, width: int) -> str:
    """``text`` on one line, cut to ``width`` terminal columns (with an ellipsis) and padded to exactly that.

    Example:
        >>> cell("white linen shirt", 10)
        'white lin…'
    """
    flat = " ".join((text or "").split())
    if display_width(flat) > width:
        while display_width(flat) > width - 1:
            flat = flat[:-1]
        flat += "…"
    return flat + " " * (width - display_width(flat))
