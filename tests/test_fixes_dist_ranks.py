"""Issue 19 #23: distributed misconfiguration is noticed.

- Ranks whose ``--model`` resolves to different weights (a relative path per host, a snapshot
  of another revision) gave garbage with exit 0: the fingerprints are compared when the ranks
  load, and the load is refused in one line naming the rank. Here ``--model llama`` is a
  relative path and a small wrapper around ``python -m workbench`` starts rank 1 in another
  folder, where ``llama`` is another model (as on two hosts with different folders).
- A rank stopped mid-reply made rank 0 exit with its one line, but mlx.launch then waited on
  the stopped rank for minutes: rank 0 now ends the ranks on its own host before it leaves,
  so the job ends without anyone waking it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.distributed import free_ports
from tests.test_distributed import (
    LAUNCH,
    PROMPTS,
    ROOT,
    _wait,
    chat_lines,
    launch,
    needs_launch,
    replies,
)

pytestmark = pytest.mark.slow

WRAPPER = """
import os, runpy
if os.environ.get("MLX_RANK") == "1":
    os.chdir(os.environ["RANK1_CWD"])
runpy.run_module("workbench", run_name="__main__")
"""


@needs_launch
def test_ranks_with_different_weights_are_refused(demo_kit, tmp_path) -> None:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    here, there = tmp_path / "here", tmp_path / "there"
    for folder, model in ((here, demo_kit.llama), (there, demo_kit.qwen3)):
        folder.mkdir()
        (folder / "llama").symlink_to(model)
    assert LAUNCH is not None
    cmd = [LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(free_ports()), "--",
           sys.executable, str(wrapper), "generate", "-m", "llama",
           "--max-tokens", "4", "-p", PROMPTS[0]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_DIST_TIMEOUT": "10",
           "RANK1_CWD": str(there)}
    proc = subprocess.Popen(cmd, cwd=here, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = _wait(proc, 120, [])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert out.strip() == "", out  # no reply from mismatched halves
    lines = [line for line in err.splitlines() if "loaded other weights" in line]
    assert lines and "rank 1" in lines[0] and lines[0].startswith("workbench:"), err[-2000:]
    assert "Traceback" not in err


@needs_launch
def test_a_stopped_rank_does_not_leave_mlx_launch_waiting(demo_kit, tmp_path) -> None:
    """No SIGCONT from the test (test_distributed wakes the job): the job must end by itself,
    well before the test's limit."""
    _rc, out, err, _s = launch(
        ["chat", "--plain", "--jsonl", "-m", str(demo_kit.llama), "--max-tokens", "400",
         "--session", "stopped", "--sessions-dir", str(tmp_path)],
        chat_lines(PROMPTS[:1]), timeout=90,
        env={"WORKBENCH_DIST_TEST_KILL": "3", "WORKBENCH_DIST_TEST_SIGNAL": "STOP",
             "WORKBENCH_DIST_TIMEOUT": "3"})
    lines = [line for line in err.splitlines() if line.startswith("workbench: distributed:")]
    assert len(lines) == 1 and "stopped answering" in lines[0], err[-2000:]
    assert not replies(out)
    assert PROMPTS[0] in (tmp_path / "stopped.toml").read_text()
