"""Session benchmark: what saving costs per turn, and what resuming from the cache saves.

A conversation of about ``history_tokens`` tokens is built turn by turn with autosave after
each turn (timed), then resumed repeatedly two ways: from the saved prompt cache, and by
prefilling the whole transcript again. Time to first token is measured where a user feels
it: from asking to resume until the first token of the next reply (the resume job's time
included). Prints nothing: ``workbench bench --sessions`` reports the numbers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from common.errors import WorkbenchError
from engine import Engine, Error, ModelLoaded, SamplingParams, TurnDone
from sessions import ResumeReport, SaveReport, SessionStore, submit_autosave, submit_resume

TURNS = 4
REPLY_TOKENS = 32
ROUNDS = 3
NEW_MESSAGE = "Thank you. Now, in two sentences, what should I read next?"


def _final(stream: Any, what: str) -> Any:
    final = stream.wait()
    if isinstance(final, Error):
        raise WorkbenchError(f"session benchmark: {what} failed: {final.message}")
    return final


def _filler(engine: Engine, tokens: int, parts: int) -> list[str]:
    """``parts`` user messages of about ``tokens / parts`` tokens of real text each."""

    def make(core: Any, _emit: Any, _cancel: Any) -> list[str]:
        from pydoc_data import topics

        text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
        ids: list[int] = []
        for at in range(0, len(text), 2000):  # in pieces: no "longer than the model" warning
            ids += core.tokenizer.encode(text[at:at + 2000], add_special_tokens=False)
            if len(ids) >= tokens:
                break
        size = max(1, tokens // parts)
        return [str(core.tokenizer.decode(ids[i * size:(i + 1) * size])) for i in range(parts)]

    return list(_final(engine.submit(make), "preparing the text").value)


def _time_checksum(core: Any, _emit: Any, _cancel: Any) -> float:
    """Seconds to verify the active cache's checksum, as a resume does."""
    from sessions.cache_file import tensor_digest

    snap = core.snapshot()
    start = time.perf_counter()
    tensor_digest(snap.cache if snap else [])
    return time.perf_counter() - start


def run_session_bench(model: str | None = None, history_tokens: int = 2000) -> dict[str, Any]:
    """Measure session save and resume on ``model`` (default: the demo model).

    Keys: ``resume_ttft_s`` and ``reprefill_ttft_s`` (medians over a few rounds),
    ``resume_speedup`` (their ratio), ``save_ms_per_turn`` (median autosave of transcript
    and cache), ``cache_bytes``/``cache_tokens``/``toml_bytes`` of the final session,
    ``session_sizes`` (those three after every turn), ``session_resume_load_ms`` (the
    resume job alone) and ``session_history_tokens``.
    """
    from workbench.runtime import bench_model_path, on_engine

    params = SamplingParams(max_tokens=REPLY_TOKENS)
    with tempfile.TemporaryDirectory(prefix="workbench-bench-sessions-") as folder, \
            Engine() as engine, SessionStore(folder) as store:
        spec = model or str(on_engine(engine, bench_model_path))
        loaded = _final(engine.load(spec), f"loading {spec}")
        assert isinstance(loaded, ModelLoaded)
        session = store.new("bench", model=spec, sampling=params)
        saves: list[float] = []
        sizes: list[dict[str, int]] = []
        history = 0
        for text in _filler(engine, history_tokens, TURNS):
            session.add_user(text)
            done = _final(engine.chat(session.chat_messages(), params, ignore_eos=True),
                          "a turn")
            assert isinstance(done, TurnDone)
            session.add_reply(done.text, done.stats.to_dict())
            history = done.stats.context_tokens
            start = time.perf_counter()
            report: SaveReport = _final(submit_autosave(engine, store, session),
                                        "autosave").value
            saves.append(time.perf_counter() - start)
            # On disk: the whole file plus the segments appended since (sessions/cache.py).
            sizes.append({"tokens": report.cache.tokens,
                          "cache_bytes": store.summary(session.name).cache_bytes,
                          "written_bytes": report.cache.bytes,
                          "toml_bytes": report.transcript.bytes})

        ask = [*session.chat_messages(), {"role": "user", "content": NEW_MESSAGE}]
        first = SamplingParams(max_tokens=1)
        resumed, loads, reprefilled, verifies = [], [], [], []
        for _ in range(ROUNDS):
            _final(engine.reset(), "reset")
            start = time.perf_counter()
            resume: ResumeReport = _final(submit_resume(engine, store, session),
                                          "resume").value
            loaded_s = time.perf_counter() - start
            if not resume.reused:
                raise WorkbenchError(f"session benchmark: the cache was not reused "
                                     f"({resume.reason})")
            turn = _final(engine.chat(ask, first, ignore_eos=True), "the resumed turn")
            loads.append(loaded_s)
            resumed.append(loaded_s + turn.stats.ttft_s)

            verifies.append(_final(engine.submit(_time_checksum), "checksum").value)

            _final(engine.reset(), "reset")
            turn = _final(engine.chat(ask, first, ignore_eos=True), "the re-prefilled turn")
            reprefilled.append(turn.stats.ttft_s)

    resume_ttft = statistics.median(resumed)
    reprefill_ttft = statistics.median(reprefilled)
    last = sizes[-1]
    return {
        "resume_ttft_s": round(resume_ttft, 4),
        "reprefill_ttft_s": round(reprefill_ttft, 4),
        "resume_speedup": round(reprefill_ttft / resume_ttft, 1) if resume_ttft else 0.0,
        "save_ms_per_turn": round(1000 * statistics.median(saves), 2),
        "cache_bytes": last["cache_bytes"],
        "cache_tokens": last["tokens"],
        "toml_bytes": last["toml_bytes"],
        "session_sizes": sizes,
        "session_resume_load_ms": round(1000 * statistics.median(loads), 2),
        # Checking the cache's checksum on resume (part of the load above), and its share.
        "session_verify_ms": round(1000 * statistics.median(verifies), 2),
        "session_verify_share": round(statistics.median(verifies) / resume_ttft, 4)
        if resume_ttft else 0.0,
        "session_history_tokens": history,
    }
