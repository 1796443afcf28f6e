"""Below the faces nothing imports a UI library, checked at run time: every module imported
in a clean interpreter (import-linter's contracts read the source; this sees what importing
really loads, lazy imports included). And nothing outside the engine imports its private
names. The layers themselves: pyproject [tool.importlinter] and tests/test_layers.py."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UI = ("textual", "rich", "prompt_toolkit")


def _modules(package: str) -> list[str]:
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / package)])]


PACKAGES = ("common", "models", "engine", "sessions", "jobs")

_IMPORT_EACH = """
import importlib, sys
ui = {ui!r}
for name in {modules!r}:
    importlib.import_module(name)
    pulled = [m for m in ui if m in sys.modules]
    if pulled:
        print(name, "pulls in", ",".join(pulled))
        break
"""


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_no_ui_library(package):
    """Every module of the package, one after the other in a clean interpreter: the first
    one that pulls a UI library in is named."""
    modules = [package, *_modules(package)]
    code = _IMPORT_EACH.format(ui=UI, modules=modules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_nothing_outside_the_engine_imports_its_private_names():
    """sessions/, models/, bench/ and the faces use the engine's public API only."""
    import ast

    offenders = []
    for folder in ("common", "models", "sessions", "jobs", "bench", "workbench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine"):
                    parts = (node.module or "").split(".")
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private or any(p.startswith("_") for p in parts):
                        offenders.append(f"{path.relative_to(ROOT)}: {node.module} {private}")
    assert offenders == []


def test_engine_runs_a_turn_without_ui_libraries(demo_kit):
    """Loading and chatting (mlx-lm included) must not drag a UI library in either."""
    code = (
        "import sys\n"
        "from engine import Engine\n"
        "with Engine() as e:\n"
        f"    e.load({str(demo_kit.llama)!r}).wait()\n"
        "    e.chat([{'role': 'user', 'content': 'hi'}]).wait()\n"
        f"print(','.join(m for m in {UI!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
