"""A missing optional dependency is one line naming the extra to install, never a traceback.

The commands and examples run in a subprocess whose ``sys.modules`` blocks one module (``None`` there makes
``import`` fail as if it were not installed), so these run in the full development venv too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.extras import MissingExtraError, exit_unless_installed, require

ROOT = Path(__file__).resolve().parent.parent


def test_present_module_is_returned() -> None:
    assert require("json", "server").dumps([1]) == "[1]"


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install 'lychee-rerank\[qdrant\]'") as raised:
        require("no_such_module_for_lychee_tests", "qdrant")
    # An ImportError for callers that catch one, a LycheeError for the CLI's one-line report.
    assert isinstance(raised.value, LycheeError)
    assert isinstance(raised.value, MissingExtraError)
    assert (raised.value.module, raised.value.extra) == ("no_such_module_for_lychee_tests", "qdrant")


def test_script_guard_names_every_missing_extra_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        exit_unless_installed("x.py", {"json": "server", "no_such_lychee_a": "qdrant", "no_such_lychee_b": "langchain"})
    assert raised.value.code == 2
    assert capsys.readouterr().err == (
        "error: x.py needs no_such_lychee_a, no_such_lychee_b: pip install 'lychee-rerank[langchain,qdrant]'\n"
    )


def test_script_guard_passes_when_everything_is_installed(capsys: pytest.CaptureFixture[str]) -> None:
    exit_unless_installed("x.py", {"json": "server", "email.message": "server"})
    assert capsys.readouterr().err == ""


def _run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )


def _assert_one_line_naming(result: subprocess.CompletedProcess[str], extra: str, status: int = 2) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"pip install 'lychee-rerank[{extra}]'" in result.stderr
    assert result.returncode == status


CLI = "from lychee_rerank.core.cli import main\nsys.exit(main({argv!r}))\n"


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        (("fastapi",), ["serve", "--model", "tiny"], "server"),
        (("uvicorn",), ["serve", "--model", "tiny"], "server"),
        (("torch",), ["serve", "--model", "tiny"], "server"),
        (("torch",), ["score", "--model", "tiny", "--query", "q", "--doc", "d"], "local"),
        (("transformers",), ["score", "--model", "tiny", "--query", "q", "--doc", "d"], "local"),
        (("torch",), ["demo", "--model", "tiny"], "demo"),
        (("qdrant_client",), ["demo", "--model", "tiny"], "demo"),
        (("elasticsearch",), ["elasticsearch", "check-endpoint"], "elasticsearch"),
        (("opensearchpy",), ["opensearch", "check"], "opensearch"),
    ],
)
def test_command_without_its_extra_is_one_line_naming_it(blocked: tuple[str, ...], argv: list[str], extra: str) -> None:
    _assert_one_line_naming(_run_without(blocked, CLI.format(argv=argv)), extra)


def test_local_reranker_without_torch_is_an_import_error_naming_local() -> None:
    code = (
        "try:\n"
        "    from lychee_rerank.core import LocalReranker\n"
        "except ImportError as error:\n"
        "    print(error, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    _assert_one_line_naming(_run_without(("torch",), code), "local")


@pytest.mark.parametrize(
    ("example", "blocked", "extra"),
    [
        ("langchain_rag", "langchain_core", "langchain"),
        ("llamaindex_query_engine", "llama_index", "llamaindex"),
        ("qdrant_hybrid_rerank", "qdrant_client", "qdrant"),
        ("elasticsearch_rescore", "elasticsearch", "elasticsearch"),
        ("opensearch_pipeline", "opensearchpy", "opensearch"),
        ("ecommerce_search", "torch", "local"),
        ("academic_figures", "torch", "local"),
        ("industrial_inspection", "torch", "local"),
        ("langchain_rag", "torch", "local"),
    ],
)
def test_example_without_its_framework_is_one_line_naming_the_extra(example: str, blocked: str, extra: str) -> None:
    path = ROOT / "examples" / f"{example}.py"
    code = (
        f"import runpy\nsys.argv = [{str(path)!r}, '--model', 'tiny']\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    result = _run_without((blocked,), code)
    _assert_one_line_naming(result, extra)
    assert result.stderr.startswith(f"error: examples/{example}.py needs ")


def test_client_side_example_with_model_but_without_torch_names_local() -> None:
    # The service URL needs no torch; --model does, and says so before touching the search engine.
    path = ROOT / "examples" / "qdrant_hybrid_rerank.py"
    code = (
        f"import runpy\nsys.argv = [{str(path)!r}, '--qdrant', ':memory:', '--model', 'tiny']\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    _assert_one_line_naming(_run_without(("torch",), code), "local")
