"""Installs one exact release into a side folder, with what of its requirements this Python does not meet.

Run with the main venv's Python: ``python .ci/side_install.py FOLDER 'transformers==5.0.0' [--optional kernels]``.
With FOLDER first on ``PYTHONPATH`` that Python then imports the release, and everything else (torch above
all) from the venv as it is. pip's ``--target`` alone would install the whole dependency tree again, numpy
included; here only a requirement the venv does not meet (an older tokenizers, say) goes into the folder,
and the same is done for what that brings, until nothing is unmet.

``--optional NAME``: a package the release imports on its own whenever it is installed (transformers and
``kernels``). If the venv has a version the release's extras do not admit, the admitted one goes into the
folder too, as it would be on a machine that installed that release.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import pathlib
import shutil
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _installed(name: str, folder: str) -> metadata.Distribution | None:
    """The distribution ``import`` finds first: the folder's, else the venv's."""
    wanted = canonicalize_name(name)
    for distribution in metadata.distributions(path=[folder, *sys.path]):
        if canonicalize_name(distribution.metadata["Name"] or "") == wanted:
            return distribution
    return None


def _unmet(distribution: metadata.Distribution, folder: str, extras: list[str], only: set[str] | None) -> list[str]:
    """Requirements of ``distribution`` (under ``extras``) that nothing installed satisfies.

    With ``only``, just those packages, and only where a version is installed (an absent optional
    package is fine).
    """
    unmet = []
    for line in distribution.requires or []:
        requirement = Requirement(line)
        if only is not None and canonicalize_name(requirement.name) not in only:
            continue
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in extras):
            continue
        found = _installed(requirement.name, folder)
        if found is None and only is not None:
            continue
        if found is None or not requirement.specifier.contains(found.version, prereleases=True):
            unmet.append(f"{requirement.name}{requirement.specifier}")
    return unmet


def _pip_install(folder: str, requirements: list[str]) -> None:
    # pip --target replaces a package's folder but keeps the old release's .dist-info beside the new one,
    # and metadata would then report either version: remove a release already in the folder first.
    # Only files inside the folder: a RECORD of pip --target names its scripts outside it (../../bin/...).
    root = pathlib.Path(folder).resolve()
    for requirement in requirements:
        for old in metadata.distributions(path=[folder]):
            if canonicalize_name(old.metadata["Name"] or "") != canonicalize_name(Requirement(requirement).name):
                continue
            for file in old.files or []:
                path = pathlib.Path(str(old.locate_file(file))).resolve()
                if path.is_relative_to(root):
                    path.unlink(missing_ok=True)
            for leftover in root.glob("*.dist-info"):
                if not (leftover / "METADATA").exists():  # what RECORD did not list (empty folders)
                    shutil.rmtree(leftover)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", folder]
    subprocess.run([*command, *requirements], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("requirement", help="an exact release, e.g. transformers==5.0.0")
    parser.add_argument("--optional", action="append", default=[], metavar="NAME")
    args = parser.parse_args()

    _pip_install(args.folder, [args.requirement])
    release = _installed(Requirement(args.requirement).name, args.folder)
    if release is None:
        sys.exit(f"pip installed {args.requirement} into {args.folder}, but it cannot be found there")
    optional = {canonicalize_name(name) for name in args.optional}
    unmet = _unmet(release, args.folder, release.metadata.get_all("Provides-Extra") or [], optional)
    for _ in range(5):  # each round installs what the previous one brought; a real tree settles in two
        unmet += [
            requirement
            for distribution in metadata.distributions(path=[args.folder])
            for requirement in _unmet(distribution, args.folder, [""], None)
        ]
        if not unmet:
            return
        print("also into the side folder:", *sorted(set(unmet)), flush=True)
        _pip_install(args.folder, sorted(set(unmet)))
        unmet = []
    sys.exit(f"requirements still unmet after five rounds: {unmet}")


if __name__ == "__main__":
    main()
