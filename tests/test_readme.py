"""The README's commands and snippets work as written on a fresh clone.

Run for real (tiny model through ``$LYCHEE_MODEL``): the Python snippet of "In Python" and every
``lychee-rerank score`` command. Parsed by the real argument parser, so a renamed flag fails: every other
``lychee-rerank`` command (they need a cluster, a service or the model download). Checked: the extras of
every ``pip install``, the paths ``pytest`` is given, the ``docker compose`` profiles, every repository
path the README names, and that the set-up section keeps its two commands, the second of which ``.ci/run``
runs verbatim. Python blocks of other sections need a live search engine: they are compiled and their
``lychee_rerank`` imports resolved. ``hf download`` needs the model hub and is not run.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from lychee_rerank.core.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_EXTRAS = re.compile(r"(?:lychee-rerank|\.)\[([\w,-]+)\]|`\[([\w,-]+)\]`")
_COMMAND_START = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:\.venv/bin/)?(?:lychee-rerank|pip|python3?|docker)\s")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def _blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def _prose(text: str) -> str:
    return _FENCE.sub("", text)


def _commands() -> list[str]:
    """Every command line: the lines of bash blocks, split at ``&&``, and inline spans that are commands."""
    lines = [line for block in _blocks(README, "bash") for line in block.splitlines() if line.strip()]
    spans = [" ".join(span.split()) for span in _SPAN.findall(_prose(README))]
    commands = [part.strip() for line in lines + spans for part in line.split("&&")]
    return [command for command in commands if _COMMAND_START.match(command + " ")]


def _argv(command: str) -> list[str]:
    """The words of a command without leading ``VAR=value`` assignments, the program as a bare name."""
    words = shlex.split(command)
    while words and _ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    words[0] = words[0].removeprefix(".venv/bin/")
    return words


def _extras_in_pyproject() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: read what the installed metadata declares
        from importlib.metadata import metadata

        return set(metadata("lychee-rerank").get_all("Provides-Extra") or [])
    with (ROOT / "pyproject.toml").open("rb") as file:
        return set(tomllib.load(file)["project"]["optional-dependencies"])


COMMANDS = _commands()
# A bare `lychee-rerank` in the prose names the program; it is no command to check.
LYCHEE_COMMANDS = [argv[1:] for argv in map(_argv, COMMANDS) if argv[0] == "lychee-rerank" and len(argv) > 1]


def test_the_command_finder_sees_the_commands_that_matter() -> None:
    subcommands = {
        argv[0] if argv[0] not in ("elasticsearch", "opensearch") else " ".join(argv[:2]) for argv in LYCHEE_COMMANDS
    }
    assert {"score", "serve", "demo", "elasticsearch install-endpoint", "opensearch install"} <= subcommands
    assert any(_argv(command)[:2] == ["pip", "install"] for command in COMMANDS)


def test_set_up_is_two_commands_and_ci_runs_the_test_one_verbatim() -> None:
    setup = _blocks(_section("Set up"), "bash")
    assert len(setup) == 2, setup
    demo, tests = (block.strip() for block in setup)
    assert "\n" not in demo
    assert "\n" not in tests
    assert demo.endswith(".venv/bin/lychee-rerank demo")
    assert tests.endswith(".venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci


@pytest.mark.parametrize("argv", LYCHEE_COMMANDS, ids=[" ".join(argv)[:60] for argv in LYCHEE_COMMANDS])
def test_every_lychee_rerank_command_parses(argv: list[str]) -> None:
    # argparse exits on an unknown flag, a missing required one or a bad choice.
    if "--help" in argv:
        with pytest.raises(SystemExit) as raised:
            build_parser().parse_args(argv)
        assert raised.value.code == 0
        return
    args = build_parser().parse_args(argv)
    assert callable(args.handler)


def test_score_commands_run_as_written(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [argv for argv in LYCHEE_COMMANDS if argv[0] == "score" and "--doc" in argv]  # not mere mentions
    assert runs
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the clone
    monkeypatch.setenv("LYCHEE_MODEL", str(tiny_model_dir))
    for argv in runs:
        assert main(argv) == 0
        output = capsys.readouterr().out
        documents = sum(1 for word in argv if word == "--doc")
        rows = [line for line in output.splitlines() if re.match(r"^\s+\d+\s+\d\.\d{4}\s+\d+\s", line)]
        assert len(rows) == documents, output


def test_the_in_python_snippet_runs_as_written(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [snippet] = _blocks(_section("In Python"), "python")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("LYCHEE_MODEL", str(tiny_model_dir))
    exec(compile(snippet, "README.md (In Python)", "exec"), {"__name__": "readme_snippet"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines  # top_n=2 results, then the async scores
    for line in lines[:2]:
        index, score = line.split()
        assert int(index) in (0, 1, 2)
        assert 0.0 <= float(score) <= 1.0


def test_other_python_blocks_compile_and_their_imports_resolve() -> None:
    in_python = _blocks(_section("In Python"), "python")
    others = [block for block in _blocks(README, "python") if block not in in_python]
    for block in others:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lychee_rerank"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def test_every_extra_the_readme_names_exists() -> None:
    named = {
        extra.strip()
        for match in _EXTRAS.finditer(README)
        for group in match.groups()
        if group
        for extra in group.split(",")
    }
    assert {"local", "server", "ui", "demo", "all", "dev", "langchain"} <= named
    assert named - _extras_in_pyproject() == set()


def test_pip_installs_name_existing_extras() -> None:
    extras = _extras_in_pyproject()
    for command in COMMANDS:
        argv = _argv(command)
        if argv[:2] != ["pip", "install"]:
            continue
        for word in argv[2:]:
            if match := re.fullmatch(r"(?:lychee-rerank|\.)\[([\w,-]+)\]", word):
                assert set(match[1].split(",")) <= extras, command


def test_pytest_commands_name_existing_paths() -> None:
    for command in COMMANDS:
        argv = _argv(command)
        if argv[:3] == ["python", "-m", "pytest"]:
            for path in argv[3:]:
                assert (ROOT / path).exists(), command


def test_docker_compose_profiles_exist() -> None:
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    profiles = {
        name.strip(" \"'") for group in re.findall(r"profiles:\s*\[([^\]]*)\]", compose) for name in group.split(",")
    }
    used = [_argv(command) for command in COMMANDS if _argv(command)[:2] == ["docker", "compose"]]
    assert used
    for argv in used:
        assert argv[argv.index("--profile") + 1] in profiles, argv


def test_every_repository_path_named_exists() -> None:
    spans = [" ".join(span.split()) for span in _SPAN.findall(_prose(README))]
    words = [word for span in spans for word in span.split()]
    paths = [
        word.rstrip(".,;:)")
        for word in words
        if re.match(r"^(core|adapters|plugins|examples|tests|client_tests|integration_tests|benchmarks)/", word)
        or word in ("Dockerfile", "docker-compose.yml", ".ci/run")
    ]
    assert "examples/images/shirt_white.png" in paths
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert missing == []
