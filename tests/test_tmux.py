"""The app in a real terminal: tmux runs ``workbench --demo``, we type, read the screen, quit."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


class Tmux:
    """A private tmux server (its own socket), so a user's sessions are never touched."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, check=True)
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "wb")

    def wait_for(self, test: Callable[[str], bool], what: str, timeout: float = 180.0) -> str:
        end = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if time.monotonic() > end:
                raise AssertionError(f"gave up waiting for {what}; the screen:\n{screen}")
            time.sleep(0.2)


def workbench_command() -> list[str]:
    script = Path(sys.executable).with_name("workbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "workbench"]


def test_workbench_demo_in_tmux(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    exit_file = tmp_path / "exit_code"
    env = {k: os.environ[k] for k in ("WORKBENCH_CONFIG_DIR", "WORKBENCH_DATA_DIR",
                                      "WORKBENCH_CACHE_DIR", "HF_HUB_OFFLINE")}
    env["TERM"] = "xterm-256color"
    command = " ".join([
        # COLUMNS/LINES (which tmux can pass down from pytest) would pin the app to 80x24.
        "env", "-u", "COLUMNS", "-u", "LINES", *(shlex.quote(f"{k}={v}") for k, v in env.items()),
        *map(shlex.quote, workbench_command()), "--demo", "--max-tokens", "32", "--temp", "0",
        ";", "echo", "$?", ">", shlex.quote(str(exit_file)),
    ])
    tmux = Tmux(f"wb-test-{os.getpid()}")
    # Start the app only once the window has its final size (a fresh tmux server can
    # create it at 80x24 first and resize it a moment later).
    tmux("new-session", "-d", "-s", "wb", "-x", "120", "-y", "36", "sleep 600")
    tmux("respawn-pane", "-k", "-t", "wb", command)
    try:
        # The window is up at once; the demo model is built and loaded behind it.
        tmux.wait_for(lambda s: "MLX Workbench" in s, "the first frame", timeout=60)
        # Whichever demo model it is (its name and words are the demo kit's business).
        screen = tmux.wait_for(lambda s: "ready · " in s, "the demo model to load")
        assert "is the DEMO model" in screen
        tmux("send-keys", "-t", "wb", "-l", "hello from tmux")
        tmux("send-keys", "-t", "wb", "Enter")
        screen = tmux.wait_for(lambda s: " tokens ·" in s and "tok/s" in s, "the reply")
        assert "hello from tmux" in screen
        assert "stopped at max tokens" in screen or "· done" in screen
        tmux("send-keys", "-t", "wb", "C-q")
        end = time.monotonic() + 30
        while not exit_file.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
