"""A clean teardown: a test process that ran engines and models exits 0.

Two modules that each pass alone crashed the process at exit when run together (exit 139,
SIGSEGV after "40 passed"): a model run on the main thread left compiled functions in the
main thread's MLX cache, torn down after the interpreter had gone. CI reads pytest's exit
code, so that crash is a red build with every test green. Tests now run models on a thread
of their own (``tests.helpers.on_reference_thread``) or on the engine's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_engine_using_modules_in_one_process_exit_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "tests/test_app_first_hour.py", "tests/test_sessions_incremental.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=1100)
    tail = (proc.stdout + proc.stderr)[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, tail
    assert proc.returncode == 0, f"exit {proc.returncode} after the tests:\n{tail}"


def test_reference_runs_leave_the_main_thread_without_mlx_work() -> None:
    """The helper runs its function elsewhere and hands back its value and its errors."""
    import threading

    from tests.helpers import on_reference_thread

    assert on_reference_thread(lambda: threading.current_thread().name) == "mlx-reference"
    with pytest.raises(ValueError, match="handed back"):
        on_reference_thread(lambda: (_ for _ in ()).throw(ValueError("handed back")))
