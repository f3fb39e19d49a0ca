"""Packaging: every imported third-party package declared, one version, license, py.typed."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import ncood

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ncood"
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# module -> distribution for optional packages that may not be installed here (then
# importlib.metadata cannot tell which distribution provides the module)
NOT_INSTALLED_NAMES = {"faiss": "faiss-cpu", "captum": "captum", "timm": "timm"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> one file importing it, over every module of the package."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_package_is_declared():
    """A dependency, or an extra for an optional import (faiss, timm, captum, ...)."""
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    declared = {_normalise(re.match(r"[A-Za-z0-9._-]+", dep).group(0)) for dep in requirements}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in ("ncood", "__future__"):
            continue
        fallback = [NOT_INSTALLED_NAMES.get(module, module)]
        dists = {_normalise(d) for d in distributions.get(module, fallback)}
        if not dists & declared:
            missing.append(f"{module} ({'/'.join(sorted(dists))}, imported in {where})")
    assert not missing, f"imported but in no [project] dependencies or extra: {missing}"


def test_one_source_for_the_version():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project.get("dynamic", [])
    dynamic = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "ncood.__version__"}
    assert importlib.metadata.version("ncood") == ncood.__version__


def test_license_and_type_marker():
    project = _pyproject()["project"]
    assert project["license"] == "MIT"  # an SPDX expression (PEP 639), not a table
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "ncood developers" in text
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["ncood"]
    requires = _pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\.\d+)*", r) for r in requires)


def test_every_data_file_of_the_package_is_shipped():
    import fnmatch

    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["ncood"]
    unshipped = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.is_file()
        and p.suffix not in (".py", ".pyc")
        and "__pycache__" not in p.parts
        and not any(fnmatch.fnmatch(str(p.relative_to(PACKAGE)), pat) for pat in patterns)
    ]
    assert not unshipped, f"files a wheel would leave out (add to package-data): {unshipped}"
