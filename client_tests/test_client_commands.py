"""The command line in the light install: help works; what needs the model says which extra in one line."""

from __future__ import annotations

import pytest

from lychee_rerank.core.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["elasticsearch", "--help"], ["opensearch", "install", "--help"]])
def test_command_line_help_works_in_the_light_install(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith("usage: lychee-rerank")


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["score", "--model", "tiny", "--query", "q", "--doc", "d"], "torch", "local"),
        (["serve", "--model", "tiny"], "fastapi", "server"),
        (["demo", "--model", "tiny"], "torch", "demo"),
    ],
)
def test_commands_that_need_the_model_name_their_extra_in_one_line(
    argv: list[str], missing: str, extra: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    because = f"{missing!r} is not installed; it comes with the {extra!r} extra"
    assert capsys.readouterr().err == f"error: {because}: pip install 'lychee-rerank[{extra}]'\n"
