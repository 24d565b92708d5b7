"""A ranked list as a plain-text table, shared by the demo's examples."""

from __future__ import annotations

from collections.abc import Sequence

from lychee_rerank.core.display import cell


def ranking_table(rows: Sequence[tuple[float, str, str]], *, text_width: int = 64) -> str:
    """``rank  score  id  text`` lines for ``(score, id, text)`` rows given best first.

    Example:
        >>> print(ranking_table([(0.91, "p3", "White linen shirt"), (0.12, "p1", "Blue mug")]))
        rank   score  id  text
           1  0.9100  p3  White linen shirt
           2  0.1200  p1  Blue mug
    """
    id_width = max([2, *(len(name) for _, name, _ in rows)])
    lines = [f"{'rank':>4}  {'score':>6}  {'id':<{id_width}}  text"]
    for rank, (score, name, text) in enumerate(rows, start=1):
        lines.append(f"{rank:>4}  {score:6.4f}  {name:<{id_width}}  {cell(text, text_width)}".rstrip())
    return "\n".join(lines)
