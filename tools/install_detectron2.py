#!/usr/bin/env python
"""Install detectron2 into the current Python environment, from the first source that works.

detectron2 is not published on the package index under its own name, and its official install
builds from GitHub. This script is the one place that knows how to get it. Sources, in order:

1. ``present``: detectron2 is already importable. It is kept as is (official builds included).
2. ``github``: the official source at a pinned commit, built with its C++ ops
   (``pip install git+https://github.com/facebookresearch/detectron2.git@<commit>``). Tried only
   when github.com answers within a few seconds, so an offline machine fails over at once.
3. ``pb1``: the index's ``pb1-detectron2==0.6`` source archive, whose ``detectron2/`` Python files
   are those of the official v0.6 tag. It lacks the C++ sources, so it is verified against a
   known sha256 and installed as a pure-Python package named ``detectron2`` (no ``detectron2._C``).
   :mod:`retinafocal.compat` makes that build usable on today's packages.

Set ``RETINAFOCAL_D2_SOURCE`` to ``github`` or ``pb1`` to force a source (``auto`` is the default).
The script prints the source it used; it exits non-zero when no source worked.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Newest commit of facebookresearch/detectron2 main that retinafocal was checked against.
GITHUB_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
GITHUB_URL = f"git+https://github.com/facebookresearch/detectron2.git@{GITHUB_COMMIT}"
PB1_SPEC = "pb1-detectron2==0.6"
PB1_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# A pyproject.toml that packages the archive's pure-Python tree under detectron2's own name, so
# ``pip uninstall detectron2`` and ``importlib.metadata.version("detectron2")`` behave as usual.
_PB1_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "detectron2"
version = "0.6"
description = "detectron2 v0.6 Python package from the pb1-detectron2 archive, without _C"

[tool.setuptools.packages.find]
include = ["detectron2*"]

[tool.setuptools.package-data]
"detectron2.model_zoo" = ["configs/**/*.yaml", "configs/**/*.py"]
"""


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def github_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def install_from_github() -> None:
    # --no-build-isolation: detectron2's setup.py imports torch to build its C++ ops against the
    # torch that is installed here.
    pip("install", "--no-build-isolation", GITHUB_URL)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install_from_pb1() -> None:
    with tempfile.TemporaryDirectory(prefix="retinafocal-d2-") as tmp:
        tmp_path = Path(tmp)
        # The sdist's setup.py imports torch while pip reads its metadata, hence no isolation.
        pip("download", "--quiet", "--no-deps", "--no-build-isolation", PB1_SPEC, "-d", tmp)
        archives = sorted(tmp_path.glob("pb1*detectron2-0.6.tar.gz"))
        if len(archives) != 1:
            raise RuntimeError(f"expected one pb1-detectron2 archive in {tmp}, got {archives}")
        archive = archives[0]
        digest = sha256_of(archive)
        if digest != PB1_SHA256:
            raise RuntimeError(f"{archive.name}: sha256 {digest} != expected {PB1_SHA256}")
        log(f"{archive.name}: sha256 verified")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "src", filter="data")
        (root,) = (tmp_path / "src").iterdir()
        stage = tmp_path / "stage"
        stage.mkdir()
        os.rename(root / "detectron2", stage / "detectron2")
        (stage / "pyproject.toml").write_text(_PB1_PYPROJECT)
        pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(stage))


def main() -> int:
    source = os.environ.get("RETINAFOCAL_D2_SOURCE", "auto").lower()
    if source not in ("auto", "github", "pb1"):
        log(f"RETINAFOCAL_D2_SOURCE={source!r} is not one of auto, github, pb1")
        return 2
    if source == "auto" and importlib.util.find_spec("detectron2") is not None:
        log("source: present (detectron2 is already importable; kept)")
        return 0
    if source in ("auto", "github"):
        if github_reachable():
            log(f"source: github ({GITHUB_URL})")
            try:
                install_from_github()
                return 0
            except subprocess.CalledProcessError as e:
                if source == "github":
                    raise
                log(f"github install failed ({e}); falling back to {PB1_SPEC}")
        elif source == "github":
            log("github.com is unreachable and RETINAFOCAL_D2_SOURCE=github")
            return 1
        else:
            log("github.com is unreachable; falling back to the package index")
    log(f"source: pb1 ({PB1_SPEC}, pure Python, no detectron2._C)")
    install_from_pb1()
    return 0


if __name__ == "__main__":
    sys.exit(main())
