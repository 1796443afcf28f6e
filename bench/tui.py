"""How much the screen costs the model: the real app, headless, streaming a long reply.

In one process and on one loaded model, ``run_tui_bench`` alternates the engine alone (the
same prompt and settings, its events not displayed) with turns streamed through the app
itself (prompt box, worker, Markdown stream, meters), and measures how late a repeating
10 ms timer on the app's event loop runs while the app streams. Decode rates vary from run
to run on a shared machine, so the results are medians, and the ratio compares each app
turn with the engine runs just before and after it; ``ui_cpu_ms_per_frame`` is the UI
thread's CPU time over a streamed turn divided by the frames the paced streamer painted.
``first_frame_s`` is measured
separately, in a fresh process under a pseudo-terminal: from starting ``python -m workbench``
to the first frame's text arriving on the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import select
import statistics
import subprocess
import sys
import time
from typing import Any

from engine import EngineAPI, SamplingParams, TurnDone
from workbench.cli import make_args
from workbench.config import Config
from workbench.tui.app import WorkbenchApp

PROMPT = ("Write a long story about a lighthouse keeper who finds a message in a bottle, "
          "with a list of what the keeper does each day and a short poem at the end.")
LAG_INTERVAL_S = 0.010
FIRST_FRAME_MARKER = "MLX Workbench"
_ANSI = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|P[^\x1b]*\x1b\\|.)")


class BenchError(Exception):
    """The benchmark could not run (the model did not load, a turn failed)."""


class LagProbe:
    """A repeating timer on the event loop that records how late each tick runs."""

    def __init__(self, interval: float = LAG_INTERVAL_S) -> None:
        self.interval = interval
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.lateness.append(max(0.0, time.perf_counter() - due))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def p99_ms(self) -> float:
        if len(self.lateness) < 2:
            return 0.0
        return 1000 * statistics.quantiles(self.lateness, n=100, method="inclusive")[98]


async def _engine_alone(engine: EngineAPI, params: SamplingParams) -> TurnDone:
    """The same turn with nobody displaying it: wait on the stream from another thread."""
    engine.reset()
    stream = engine.chat([{"role": "user", "content": PROMPT}], params, ignore_eos=True)
    final = await asyncio.to_thread(stream.wait)
    if not isinstance(final, TurnDone):
        raise BenchError(f"the engine-only turn failed: {getattr(final, 'message', final)}")
    return final


async def _until(condition: Any, what: str, timeout: float) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise BenchError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def _app_turn(app: WorkbenchApp, timeout: float) -> tuple[dict[str, float], LagProbe]:
    """Send the prompt through the prompt box and stream the reply on screen."""
    app.engine.reset()
    await app.action_new_chat()
    probe = LagProbe()
    probe.start()
    cpu_before = time.thread_time()  # the UI thread's own CPU time (the app runs here)
    app.prompt.set_text(PROMPT)
    app.prompt.action_send()  # what Enter does
    view = app.chat_view
    await _until(lambda: view.last_assistant() is not None, "the reply to start", timeout)
    turn = view.last_assistant()
    assert turn is not None
    await _until(lambda: turn.done and not app.chat.replying, "the reply to finish", timeout)
    turn_cpu = time.thread_time() - cpu_before
    await probe.stop()
    stats = turn.stats
    if stats is None:
        raise BenchError(f"the app's turn failed: {app.status.text}")
    elapsed = turn.displayed_at - turn.first_text_at
    return {
        "tui_decode_tps": stats.generated_tokens / elapsed if elapsed > 0 else 0.0,
        "generated_tokens": float(stats.generated_tokens),
        "ui_cpu_ms_per_frame": (1000 * turn_cpu / app.chat.streamer.frames
                                if app.chat.streamer.frames else 0.0),
    }, probe


async def _measure(model: str, gen_tokens: int, rounds: int, timeout: float) -> dict[str, float]:
    params = SamplingParams(temperature=0.0, seed=0, max_tokens=gen_tokens)
    app = WorkbenchApp(make_args(model=model), config=Config(), params=params)
    app.chat.ignore_eos = True
    engine_tps: list[float] = []
    shown: list[dict[str, float]] = []
    lateness: list[float] = []
    async with app.run_test(size=(120, 40)):
        await _until(lambda: app.models.load_finished, "the model to load", timeout)
        if not app.models.ready:
            raise BenchError(f"the model did not load: {app.status.text}")
        # Warm up (first-call costs) with a short turn nobody measures.
        await _engine_alone(app.engine, params.with_values(max_tokens=min(32, gen_tokens)))
        # Alternate, so that drift in the machine's speed hits both sides alike:
        # engine, app, engine, app, ..., engine.
        engine_tps.append((await _engine_alone(app.engine, params)).stats.decode_tps)
        for _ in range(rounds):
            turn, probe = await _app_turn(app, timeout)
            shown.append(turn)
            lateness.extend(probe.lateness)
            engine_tps.append((await _engine_alone(app.engine, params)).stats.decode_tps)
    ratios = [s["tui_decode_tps"] / ((engine_tps[i] + engine_tps[i + 1]) / 2)
              for i, s in enumerate(shown)]
    pooled = LagProbe()
    pooled.lateness = lateness
    return {
        "engine_decode_tps": statistics.median(engine_tps),
        "ui_cpu_ms_per_frame": statistics.median(s["ui_cpu_ms_per_frame"] for s in shown),
        "tui_decode_tps": statistics.median(s["tui_decode_tps"] for s in shown),
        "tui_to_engine_ratio": statistics.median(ratios),
        "ui_lag_p99_ms": pooled.p99_ms(),
        "ui_lag_max_ms": 1000 * max(lateness, default=0.0),
        "generated_tokens": shown[-1]["generated_tokens"],
        "rounds": float(rounds),
    }


def first_frame_seconds(model: str, timeout: float = 60.0) -> float:
    """Seconds from starting ``python -m workbench --model MODEL`` in a 120x40 pseudo-terminal
    to the first frame's text on that terminal; then Ctrl+Q, which must exit with 0."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "--model", model],
                            stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    seen: float | None = None
    output = b""
    try:
        while seen is None and time.perf_counter() - start < timeout:
            chunk = _read(master, 0.02)
            if chunk is None:
                break
            output += chunk + _read_available(master)
            if FIRST_FRAME_MARKER in _ANSI.sub(b"", output).decode("utf-8", "replace"):
                seen = time.perf_counter() - start
        os.write(master, b"\x11")  # Ctrl+Q
        end = time.perf_counter() + 30
        while proc.poll() is None and time.perf_counter() < end:
            _read(master, 0.05)  # keep the terminal drained so the app never blocks
        code = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    if seen is None:
        raise BenchError(f"no first frame within {timeout:.0f} s")
    if code != 0:
        raise BenchError(f"the app exited with {code} after Ctrl+Q")
    return seen


def _read(fd: int, wait: float) -> bytes | None:
    """What the terminal has now (b"" if nothing); None once the other side closed."""
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
        return b""
    try:
        return os.read(fd, 1 << 16) or None
    except OSError:
        return None


def _read_available(fd: int) -> bytes:
    chunks = []
    while (chunk := _read(fd, 0)):
        chunks.append(chunk)
    return b"".join(chunks)


def run_tui_bench(model: str, gen_tokens: int = 1000, rounds: int = 3,
                  timeout: float = 600.0) -> dict[str, float]:
    """Engine alone vs the app streaming ``gen_tokens`` tokens (medians over ``rounds``
    alternating rounds), the event loop's lag while streaming, and the first frame."""
    results = asyncio.run(_measure(model, gen_tokens, rounds, timeout))
    results["first_frame_s"] = first_frame_seconds(model)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", required=True, help="model folder or repo id")
    parser.add_argument("--gen-tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(run_tui_bench(args.model, args.gen_tokens, args.rounds), indent=2))
    except BenchError as exc:
        print(f"bench_tui: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
