"""Issue 14: one model over two processes with ``mlx.launch -n 2 --backend ring`` (localhost).

Each case launches the real command line (``python -m workbench ...`` on both ranks) and
compares rank 0's output with single-process replies computed here through the ``Engine``
(greedy, so they must be equal token for token): ``generate`` and a three-turn
``chat --plain --jsonl``, tensor and pipeline splits, llama and qwen3, float and 4-bit; a
cancel mid-reply followed by a correct next turn; and a follower killed mid-reply, which must
give one line and a clean exit, never a hang.

Notes on mlx.launch: it copies its stdin to every rank and never closes theirs, so the chat's
input ends with ``/quit`` and our end of the pipe stays open until the job ends (at EOF on its
own stdin it would spin); it merges every rank's stdout (the followers write nothing there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.distributed import free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or \
    shutil.which("mlx.launch")
MAX_TOKENS = 8
PROMPTS = ["Tell me about the river.", "And the mountains?", "Why?"]

needs_launch = pytest.mark.skipif(LAUNCH is None,
                                  reason="mlx.launch is not installed (pip install mlx)")


def launch(args: list[str], lines: list[str] | None = None, env: dict[str, str] | None = None,
           timeout: float = 90, wake: bool = False) -> tuple[int, str, str, float]:
    """Run ``mlx.launch -n 2 --backend ring -- python -m workbench ARGS``: (rc, stdout,
    stderr, seconds). ``lines`` are written to its stdin, which stays open until it ends.
    ``wake``: SIGCONT the whole job once rank 0 has left (a stopped rank would keep
    mlx.launch waiting forever)."""
    assert LAUNCH is not None
    cmd = [LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(free_ports()),
           "--", sys.executable, "-m", "workbench", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_DIST_TIMEOUT": "10",
                **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdin is not None
    if lines:
        proc.stdin.write(("\n".join(lines) + "\n").encode())
        proc.stdin.flush()
    errors: list[bytes] = []
    if wake:
        import threading

        def wake_up() -> None:  # once rank 0 has said its line (or left), wake the job
            deadline = time.monotonic() + timeout - 10
            while time.monotonic() < deadline and proc.poll() is None:
                text = b"".join(errors)
                if b"workbench: distributed:" in text or b"rank 0 exited" in text:
                    break
                time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)

        threading.Thread(target=wake_up, daemon=True).start()
    try:
        out, err = _wait(proc, timeout, errors)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    return proc.returncode, out, err, time.perf_counter() - start


def _wait(proc: subprocess.Popen[bytes], timeout: float, errors: list[bytes]
          ) -> tuple[str, str]:
    """Read stdout and stderr (into ``errors`` as it comes) to the end without closing stdin
    (see module docstring)."""
    import threading

    chunks: dict[str, list[bytes]] = {"out": [], "err": errors}

    def read(name: str, stream: Any) -> None:
        for block in iter(lambda: stream.read1(65536), b""):
            chunks[name].append(block)

    readers = [threading.Thread(target=read, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        for r in readers:
            r.join(5)
        pytest.fail(f"mlx.launch did not end within {timeout} s (a hang):\n"
                    + b"".join(chunks["err"]).decode(errors="replace")[-3000:])
    for r in readers:
        r.join(10)
    return (b"".join(chunks["out"]).decode(errors="replace"),
            b"".join(chunks["err"]).decode(errors="replace"))


def replies(stdout: str) -> list[dict[str, Any]]:
    return [obj for line in stdout.splitlines() if line.startswith("{")
            for obj in [json.loads(line)] if obj.get("role") == "assistant"]


@pytest.fixture(scope="module")
def reference(demo_kit):
    """Single-process greedy replies through the Engine: ``ref(model, turns, cancel_after)``
    gives each turn's (text, finish_reason); a turn with ``cancel_after`` set stops after
    that many tokens, at the same point the distributed test hook stops."""
    import threading

    from engine import Engine, SamplingParams, TokenText, TurnDone
    from sessions import Session

    engine = Engine()
    memo: dict[tuple[Any, ...], list[tuple[str, str]]] = {}

    def ref(model: Path, turns: list[str], cancel_after: int = 0,
            max_tokens: int = MAX_TOKENS) -> list[tuple[str, str]]:
        key = (str(model), tuple(turns), cancel_after, max_tokens)
        if key in memo:
            return memo[key]
        engine.load(str(model)).result_sync()

        def run(core: Any, _emit: Any, _cancel: Any) -> list[tuple[str, str]]:
            core.reset_cache()
            session = Session(name="ref")
            out = []
            for i, text in enumerate(turns):
                session.add_user(text)
                flag = threading.Event()
                done = None
                for event in core.turn(session.chat_messages(),
                                       SamplingParams(max_tokens=max_tokens), flag,
                                       time.perf_counter()):
                    if isinstance(event, TokenText) and i == 0 and cancel_after \
                            and event.generated >= cancel_after:
                        flag.set()
                    if isinstance(event, TurnDone):
                        done = event
                assert done is not None
                session.add_reply(done.text, cancelled=done.stats.finish_reason == "cancelled")
                out.append((done.text, done.stats.finish_reason))
            return out

        memo[key] = engine.submit(run).result_sync()
        return memo[key]

    yield ref
    engine.close()


def chat_lines(turns: list[str]) -> list[str]:
    return [*turns, "/quit"]


# Every model (float and 4-bit) and both splits, over the two commands; two of the chats are
# cancelled mid-reply (turn 1 stops after 3 tokens on every rank) and go on correctly.
CHAT_CASES = [
    ("llama", "tensor", 0), ("llama_4bit", "pipeline", 0),
    ("qwen3", "pipeline", 3), ("qwen3_4bit", "tensor", 3),
]


@needs_launch
@pytest.mark.parametrize(("model", "shard", "cancel_after"), CHAT_CASES)
def test_three_turn_chat_equals_single_process(demo_kit, reference, model, shard,
                                               cancel_after):
    path = getattr(demo_kit, model)
    lines = chat_lines(PROMPTS)
    if model == "llama":  # adapters are refused in one line; the chat goes on
        lines = [f"/adapter {demo_kit.adapter('tone-a')}", *lines]
    rc, out, err, _s = launch(["chat", "--plain", "--jsonl", "-m", str(path), "--shard", shard,
                               "--max-tokens", str(MAX_TOKENS)], lines,
                              env={"WORKBENCH_DIST_TEST_CANCEL": str(cancel_after)})
    assert rc == 0, err[-2000:]
    got = replies(out)
    expected = reference(path, PROMPTS, cancel_after=cancel_after)
    assert [(r["content"], r["finish_reason"]) for r in got] == expected
    if cancel_after:
        assert got[0]["finish_reason"] == "cancelled" and got[0]["stats"]["generated_tokens"] \
            == cancel_after
    # Prefix reuse across turns works on every rank: turns 2 and 3 prefilled only what was new.
    assert all(r["stats"]["reused_tokens"] > 0 for r in got[1:])
    stats = got[-1]["stats"]
    assert len(stats["rank_peak_memory"]) == 2 and stats["comm_ms_per_token"] is not None
    if model == "llama":
        adapter = next(json.loads(line) for line in out.splitlines()
                       if line.startswith('{"command": "adapter"'))
        assert not adapter["ok"] and "distributed mode" in adapter["message"]


@needs_launch
@pytest.mark.parametrize(("model", "shard"), [("qwen3", "tensor"), ("qwen3_4bit", "pipeline")])
def test_generate_equals_single_process(demo_kit, reference, model, shard):
    path = getattr(demo_kit, model)
    rc, out, err, _s = launch(["generate", "-m", str(path), "--shard", shard, "--max-tokens",
                               str(MAX_TOKENS), "-p", PROMPTS[0]])
    assert rc == 0, err[-2000:]
    (text, _finish), = reference(path, PROMPTS[:1])
    assert out == text + "\n"


@needs_launch
@pytest.mark.parametrize(("how", "says"), [
    # mlx.launch's SIGTERM, or the closed socket, whichever comes first
    pytest.param("KILL", ("ended", "failed"), id="killed"),
    pytest.param("STOP", ("stopped answering",), id="frozen"),
])
def test_follower_lost_mid_reply_gives_one_line_and_exits(demo_kit, tmp_path, how, says):
    """Rank 1 killed (mlx.launch sees it and stops the job) or stopped (a hang: only rank 0's
    watchdog can tell, after WORKBENCH_DIST_TIMEOUT). mlx.launch itself waits forever on a
    stopped child, so the job is woken once rank 0 should have left."""
    _rc, out, err, _seconds = launch(
        ["chat", "--plain", "--jsonl", "-m", str(demo_kit.llama), "--max-tokens", "400",
         "--session", "lost", "--sessions-dir", str(tmp_path)],
        chat_lines(PROMPTS[:1]), timeout=60, wake=how == "STOP",
        env={"WORKBENCH_DIST_TEST_KILL": "3", "WORKBENCH_DIST_TEST_SIGNAL": how,
             "WORKBENCH_DIST_TIMEOUT": "3"})
    lines = [line for line in err.splitlines() if line.startswith("workbench: distributed:")]
    assert len(lines) == 1, err[-2000:]
    assert "rank 1" in lines[0] and any(word in lines[0] for word in says), lines[0]
    assert lines[0].endswith("exiting")
    assert "Node with rank 0 exited with code 1" in err
    assert not replies(out)  # the reply never finished
    # Nothing lost from the session: the unanswered message is in the saved transcript.
    assert PROMPTS[0] in (tmp_path / "lost.toml").read_text()


def test_rank_that_never_joins(tmp_path):
    """Rank 0 alone in a two-rank ring: one line within the join timeout, then exit."""
    hostfile = tmp_path / "hosts.json"
    port = free_ports()
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLX_RANK": "0",
           "MLX_HOSTFILE": str(hostfile), "WORKBENCH_DIST_JOIN_TIMEOUT": "3"}
    # Bounded by the subprocess timeout: a rank 0 that waited on forever fails it.
    proc = subprocess.run([sys.executable, "-m", "workbench", "generate", "-p", "hi"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("workbench:")]
    assert len(lines) == 1 and "not every rank joined" in lines[0], proc.stderr
