"""engine/ and sessions/ never import a UI library (checked in a clean subprocess)."""

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


@pytest.mark.parametrize("module", ["engine", "sessions", *_modules("engine"),
                                    *_modules("sessions")])
def test_module_imports_no_ui_library(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {UI!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"{module} pulls in {proc.stdout.strip()}"


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
