"""The declared dependencies are true: every third-party module the code imports is declared,
the floors admit no version that lacks what the code uses, and CI installs pinned versions."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "models", "engine", "sessions", "jobs", "workbench", "bench", "themes")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in _project()["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _imported_top_modules() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            tree = ast.parse(file.read_text(), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(PACKAGES) - set(sys.stdlib_module_names) - {"__future__"}


def test_every_imported_distribution_is_declared():
    owners = metadata.packages_distributions()
    declared = set(_declared())
    missing = set()
    for module in _imported_top_modules():
        dists = {canonicalize_name(d) for d in owners.get(module, [module])}
        if not dists & declared:
            missing.add(f"{module} (from {', '.join(sorted(dists))})")
    assert not missing, f"imported but not declared in pyproject: {sorted(missing)}"


def test_huggingface_hub_floor_is_the_one_that_brings_httpx2():
    hub = _declared()["huggingface-hub"]
    assert not hub.specifier.contains("1.33.0"), hub  # 1.x has httpx, not httpx2
    assert hub.specifier.contains("2.0.0") and hub.specifier.contains("2.4.0")
    assert "httpx2" in _declared()


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not a pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_ci_installs_with_constraints_that_satisfy_pyproject():
    run = (ROOT / ".ci" / "run").read_text()
    assert "-c .ci/constraints.txt" in run
    readme = (ROOT / "README.md").read_text()
    assert "constraints" not in readme.split("## ")[1]  # the quick start stays unconstrained
    pins = _constraints()
    assert "mlx-workbench" not in pins
    for name, req in _declared().items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert name in pins, f"{name} is not pinned in .ci/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
