"""The first run in a real terminal: no network, no models, nothing configured.

tmux runs plain ``workbench`` with HF_HUB_OFFLINE=1, empty workbench folders and an empty
Hugging Face cache. The welcome screen must come up at once, say it is offline, offer the
three ways that work without a network (and not the download), while the demo model is
built and loaded underneath; Esc tries the demo; Ctrl+Q quits with status 0.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_tmux import Tmux, workbench_command

pytestmark = pytest.mark.slow


def test_first_run_without_network_or_models_in_tmux(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    exit_file = tmp_path / "exit_code"
    hf_home = tmp_path / "hf"
    env = {k: os.environ[k] for k in ("WORKBENCH_CONFIG_DIR", "WORKBENCH_DATA_DIR",
                                      "WORKBENCH_CACHE_DIR")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home),
                "HF_HUB_CACHE": str(hf_home / "hub"), "TERM": "xterm-256color"})
    command = " ".join([
        "env", "-u", "COLUMNS", "-u", "LINES", "-u", "HF_ENDPOINT",
        *(shlex.quote(f"{k}={v}") for k, v in env.items()),
        *map(shlex.quote, workbench_command()),
        ";", "echo", "$?", ">", shlex.quote(str(exit_file)),
    ])
    tmux = Tmux(f"wb-first-{os.getpid()}")
    tmux("new-session", "-d", "-s", "wb", "-x", "120", "-y", "40", "sleep 600")
    tmux("respawn-pane", "-k", "-t", "wb", command)
    try:
        # All of the screen, not a frame caught half painted.
        screen = tmux.wait_for(lambda s: "Welcome to MLX Workbench" in s and "Offline" in s
                               and "Try the demo model" in s, "the welcome screen", timeout=60)
        assert "HF_HUB_OFFLINE is set, so nothing can be downloaded" in screen
        assert "Open a local model folder" in screen
        assert "Models already in the Hugging Face cache" in screen
        assert "Try the demo model" in screen
        assert "Download the recommended model" not in screen
        assert "DEMO model" in screen  # what loads underneath is named
        tmux.wait_for(lambda s: "None yet." in s, "the (empty) cache list")
        # The demo model is built and loaded behind the welcome screen.
        tmux.wait_for(lambda s: "ready · " in s, "the demo model to load")
        tmux("send-keys", "-t", "wb", "Escape")
        screen = tmux.wait_for(lambda s: "Welcome to MLX Workbench" not in s,
                               "the welcome screen to close")
        assert "is the DEMO model" in screen
        assert "Message the model" in screen
        tmux("send-keys", "-t", "wb", "C-q")
        end = time.monotonic() + 30
        while not exit_file.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0"
        assert not any(hf_home.rglob("*.safetensors"))  # nothing was downloaded
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
