"""The package's layering (DESIGN.md section 2) holds: imports only go downward.

The contract lives in pyproject.toml (``[tool.importlinter]``); ``lint-imports`` checks
it over the whole import graph, function-level imports included. This test runs it, and
checks that every top-level module of ``ncood`` is placed in a layer, so a new module
cannot escape the contract.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ncood

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in doc["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def test_every_module_is_in_a_layer():
    placed = {name.strip() for layer in _layers() for name in layer.split("|")}
    package = Path(ncood.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules - placed == set(), "place these modules in [tool.importlinter] layers"
    assert placed - modules == set(), "these layers name modules that do not exist"


def test_import_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [str(lint), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout
