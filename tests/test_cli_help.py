"""``--help`` reads as help for users: no docstring markup in any command's help."""

from __future__ import annotations

import argparse
import re

import pytest

from lychee_rerank.core.cli import build_parser

MARKUP = re.compile(r":(class|mod|func|meth|attr):|``")


def _every_parser(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_every_parser(child))
    return found


PARSERS = _every_parser(build_parser())


def test_every_command_is_checked() -> None:
    progs = {prog for prog, _ in PARSERS}
    assert {
        "lychee-rerank",
        "lychee-rerank score",
        "lychee-rerank serve",
        "lychee-rerank demo",
        "lychee-rerank elasticsearch install-endpoint",
        "lychee-rerank opensearch install",
    } <= progs


@pytest.mark.parametrize(("prog", "parser"), PARSERS, ids=[prog for prog, _ in PARSERS])
def test_help_has_no_docstring_markup(prog: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert text.startswith("usage: ")
    assert MARKUP.findall(text) == [], text


def test_markup_pattern_catches_what_docstrings_hold() -> None:
    assert MARKUP.search("see :class:`~lychee_rerank.core.server.settings.ServerSettings`")
    assert MARKUP.search("``--doc TEXT``")
    assert not MARKUP.search("give documents with --doc TEXT; see 'lychee-rerank serve --help'")
