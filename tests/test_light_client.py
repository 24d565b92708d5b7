"""The light client loads no torch: every client-side module and the CLI's help, checked in a fresh process.

``client_tests/`` proves the same in a venv without torch; this runs in the development venv, where torch is
installed and would be imported silently by a stray top-level import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"core": "lychee_rerank.core", "adapters": "lychee_rerank.adapters", "plugins": "lychee_rerank.plugins"}

# What needs an extra heavier than the client's: the model ([local]), the service ([server]), test aids that
# score with torch, and the demo's runner ([demo]).
NOT_CLIENT_SIDE = (
    "lychee_rerank.core.local",
    "lychee_rerank.core.server",
    "lychee_rerank.core.testing",
    "lychee_rerank.adapters.demo.run",
)
HEAVY = ("torch", "torchvision", "transformers")


def client_side_modules() -> list[str]:
    """Every module under core/, adapters/ and plugins/ but those in NOT_CLIENT_SIDE, from the source tree."""
    modules = []
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if not any(name == skip or name.startswith(skip + ".") for skip in NOT_CLIENT_SIDE):
                modules.append(name)
    return modules


PROBE = """
import contextlib, importlib, io, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
from lychee_rerank.core.cli import main
for argv in (["--help"], ["elasticsearch", "--help"], ["opensearch", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main(argv)
    if "usage: lychee-rerank" not in out.getvalue():
        sys.exit(f"no help printed for {argv}")
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in json.loads(sys.argv[2]))))
"""


def test_module_list_covers_the_client() -> None:
    modules = client_side_modules()
    for expected in (
        "lychee_rerank.core",
        "lychee_rerank.core.remote",
        "lychee_rerank.core.interface",
        "lychee_rerank.core.errors",
        "lychee_rerank.core.media",
        "lychee_rerank.core.wire",
        "lychee_rerank.core.sources",
        "lychee_rerank.core.cli",
        "lychee_rerank.adapters.elasticsearch",
        "lychee_rerank.adapters.opensearch",
        "lychee_rerank.adapters.qdrant",
        "lychee_rerank.adapters.langchain",
        "lychee_rerank.adapters.llamaindex",
        "lychee_rerank.plugins.elasticsearch",
        "lychee_rerank.plugins.opensearch.cli",
    ):
        assert expected in modules


def test_client_side_modules_and_help_import_no_torch() -> None:
    modules = client_side_modules()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_the_probe_sees_torch_when_a_module_imports_it() -> None:
    # The same probe must notice a heavy import, or the test above proves nothing.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["lychee_rerank.core.local"]), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {"torch", "transformers"} <= set(json.loads(result.stdout.splitlines()[-1]))


def test_no_source_file_points_to_an_outside_design_document() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in LAYERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if "DESIGN §" in line or "DESIGN.md" in line
    ]
    assert offenders == []
