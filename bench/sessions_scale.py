"""Session saves that scale (issue 12): what an autosave costs per turn, and how fast a
resumed session answers, at 2k and 32k tokens of context.

For each context size a conversation is built (a long first message, then a few short
turns) and every turn is saved two ways into two session folders:

- *before*: the whole prompt cache rewritten as ``NAME.safetensors`` (what every autosave
  did until issue 12: ``autosave(..., whole=True)``);
- *after*: the incremental save (``autosave``: one segment with the turn's new tokens).

Then the next message is answered, time to first token measured where a user feels it:

- *uninterrupted*: in the live conversation (the cache trimmed back to the history before
  each round, as it stands after the last turn);
- *resume (segments)* / *resume (whole file)*: the engine's caches dropped, the session
  resumed from the "after" / "before" folder (the resume job's time included), then asked;
- *re-prefill*: the caches dropped and the whole transcript read again.

Reading 32k tokens on a CPU takes tens of minutes (attention grows with the context), so
above ``--real-prefill-upto`` tokens the first turn's keys and values are made up (random,
of the model's shapes, for the transcript's real token ids): saving and loading them costs
the same, and the replies are nonsense, which timing does not mind. The re-prefill time is
then not measured but bounded below by scaling the smaller context's linearly (prefill cost
per token only grows with the context). The model is a demo llama with a long context
(``models.demo.build_model``), built in a temp folder.

Run: ``python -m bench.sessions_scale [--contexts 2048 32768] [--model PATH]``; prints a
table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError
from engine import Engine, Error, SamplingParams, TurnDone
from sessions import ResumeReport, SaveReport, SessionStore, submit_autosave, submit_resume

SYSTEM = "You answer in one short paragraph."
REPLY_TOKENS = 32
NEW_MESSAGE = "Thank you. Now, in two sentences, what should I read next?"
QUESTIONS = ["Tell me more about the first part.", "And what about the second part?",
             "How do the two relate?", "Give me an example.", "What is a common mistake?"]
CANNED_REPLY = "The text explains the language reference section by section."


def _final(stream: Any, what: str) -> Any:
    final = stream.wait()
    if isinstance(final, Error):
        raise WorkbenchError(f"session scale benchmark: {what} failed: {final.message}")
    return final


def build_long_model(folder: Path, context: int) -> Path:
    """The demo llama's shape with ``max_position_embeddings`` above ``context``."""
    from dataclasses import replace

    from models.demo import LLAMA, build_model

    spec = replace(LLAMA, name="llama-long", max_position_embeddings=context + 8192)
    return build_model(folder / "llama-long", spec)


def _filler(engine: Engine, tokens: int) -> str:
    """About ``tokens`` tokens of real text (Python's own help topics)."""

    def make(core: Any, _emit: Any, _cancel: Any) -> str:
        from pydoc_data import topics

        text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
        while len(text) < tokens * 6:
            text += "\n" + text
        ids: list[int] = []
        for at in range(0, len(text), 4000):
            ids += core.tokenizer.encode(text[at:at + 4000], add_special_tokens=False)
            if len(ids) >= tokens:
                break
        return str(core.tokenizer.decode(ids[:tokens]))

    return str(_final(engine.submit(make), "preparing the text").value)


def _made_up_cache(messages: list[dict[str, str]]) -> Any:
    """A job: the active cache becomes random K/V of the model's shapes for the tokens of
    ``messages`` (as rendered for a save)."""

    def job(core: Any, _emit: Any, _cancel: Any) -> int:
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache

        tokens = core.render(messages, add_generation_prompt=False)
        probe = core.new_cache()
        core.model(mx.array([tokens[:8]]), cache=probe)
        cache = []
        for layer in probe:
            b, heads, _n, dim = layer.keys.shape
            shape = (b, heads, len(tokens), dim)
            keys = mx.random.normal(shape).astype(layer.keys.dtype)
            values = mx.random.normal(shape).astype(layer.values.dtype)
            cache.append(KVCache.from_state((keys, values, len(tokens))))
        mx.eval([c.state[:2] for c in cache])
        core.restore(cache, tokens)
        return len(tokens)

    return job


def _keep_live(kept: dict[str, Any]) -> Any:
    """A job: keep a copy of the live cache as it stands after the last turn (its buffers
    with their spare room, its token ids), to start each "uninterrupted" round from."""

    def job(core: Any, _emit: Any, _cancel: Any) -> int:
        from engine.prompt_cache import copy_layer

        slot = core.caches.get(core.cache_key)
        kept["cache"] = [copy_layer(c) for c in slot.cache]
        kept["tokens"] = list(slot.tokens)
        return len(slot.tokens)

    return job


def _back_to_live(kept: dict[str, Any]) -> Any:
    """A job: make the kept copy the live cache again (nothing else cached, as after the
    last turn of a conversation that was never interrupted)."""

    def job(core: Any, _emit: Any, _cancel: Any) -> None:
        from engine.prompt_cache import copy_layer

        core.reset_cache()
        core.restore([copy_layer(c) for c in kept["cache"]], kept["tokens"])

    return job


def _ask(engine: Engine, messages: list[dict[str, str]]) -> float:
    turn = _final(engine.chat(messages, SamplingParams(max_tokens=1), ignore_eos=True),
                  "the next turn")
    assert isinstance(turn, TurnDone)
    return float(turn.stats.ttft_s)


def _resume_ask(engine: Engine, store: SessionStore, session: Any,
                ask: list[dict[str, str]]) -> tuple[float, float, ResumeReport]:
    _final(engine.reset(), "reset")
    start = time.perf_counter()
    report: ResumeReport = _final(submit_resume(engine, store, session), "resume").value
    resumed = time.perf_counter() - start
    if not report.reused:
        raise WorkbenchError(f"session scale benchmark: the cache was not reused "
                             f"({report.reason})")
    return resumed + _ask(engine, ask), resumed, report


def bench_context(engine: Engine, context: int, turns: int, rounds: int, real_upto: int,
                  reprefill_per_token: float | None) -> dict[str, Any]:
    params = SamplingParams(max_tokens=REPLY_TOKENS)
    with tempfile.TemporaryDirectory(prefix="workbench-bench-scale-") as tmp, \
            SessionStore(Path(tmp) / "after") as after, \
            SessionStore(Path(tmp) / "before") as before:
        _final(engine.reset(), "reset")
        session = after.new("bench", system_prompt=SYSTEM, sampling=params)
        session.add_user(_filler(engine, context))
        made_up = context > real_upto
        if made_up:
            session.add_reply(CANNED_REPLY)
            _final(engine.submit(_made_up_cache(session.chat_messages())), "the first turn")
        else:
            done = _final(engine.chat(session.chat_messages(), params, ignore_eos=True),
                          "the first turn")
            session.add_reply(done.text, done.stats.to_dict())
        _final(submit_autosave(engine, after, session), "the first save")
        _final(submit_autosave(engine, before, session, whole=True), "the first save")
        rows = []
        for question in QUESTIONS[:turns]:
            session.add_user(question)
            done = _final(engine.chat(session.chat_messages(), params, ignore_eos=True),
                          "a turn")
            session.add_reply(done.text, done.stats.to_dict())
            row: dict[str, Any] = {"context_tokens": done.stats.context_tokens}
            for label, store, whole in (("after", after, False), ("before", before, True)):
                start = time.perf_counter()
                report: SaveReport = _final(submit_autosave(engine, store, session, whole),
                                            "a save").value
                row[f"{label}_ms"] = round(1000 * (time.perf_counter() - start), 2)
                row[f"{label}_cache_ms"] = round(1000 * report.cache.seconds, 2)
                row[f"{label}_bytes"] = report.cache.bytes
                row[f"{label}_kind"] = report.cache.kind
                row["new_tokens"] = report.cache.new_tokens if not whole else row.get(
                    "new_tokens", 0)
            rows.append(row)

        ask = [*session.chat_messages(), {"role": "user", "content": NEW_MESSAGE}]
        uninterrupted, resumed, resumed_whole, loads, loads_whole = [], [], [], [], []
        kept: dict[str, Any] = {}
        _final(engine.submit(_keep_live(kept)), "keeping the live cache")
        for round_no in range(rounds):
            if round_no:  # the first round is the live conversation itself
                _final(engine.submit(_back_to_live(kept)), "back to the live cache")
            uninterrupted.append(_ask(engine, ask))
            ttft, load, rep = _resume_ask(engine, after, session, ask)
            resumed.append(ttft)
            loads.append(load)
            ttft, load, _rep = _resume_ask(engine, before, session, ask)
            resumed_whole.append(ttft)
            loads_whole.append(load)
        history_tokens = rep.history_tokens
        if made_up:
            reprefill = None
            bound = (reprefill_per_token * history_tokens) if reprefill_per_token else None
        else:
            _final(engine.reset(), "reset")
            reprefill = _ask(engine, ask)
            bound = None

    med = statistics.median
    out: dict[str, Any] = {
        "context": context, "history_tokens": history_tokens, "made_up_kv": made_up,
        "save_rows": rows,
        "save_after_ms": med(r["after_ms"] for r in rows),
        "save_before_ms": med(r["before_ms"] for r in rows),
        "save_after_bytes": med(r["after_bytes"] for r in rows),
        "save_before_bytes": med(r["before_bytes"] for r in rows),
        "uninterrupted_ttft_min_s": round(min(uninterrupted), 4),
        "resume_ttft_min_s": round(min(resumed), 4),
        "uninterrupted_ttft_s": round(med(uninterrupted), 4),
        "resume_ttft_s": round(med(resumed), 4),
        "resume_load_s": round(med(loads), 4),
        "resume_whole_ttft_s": round(med(resumed_whole), 4),
        "resume_whole_load_s": round(med(loads_whole), 4),
        "reprefill_ttft_s": round(reprefill, 3) if reprefill is not None else None,
        "reprefill_lower_bound_s": round(bound, 1) if bound is not None else None,
    }
    out["resume_vs_uninterrupted"] = round(out["resume_ttft_s"] / out["uninterrupted_ttft_s"],
                                           2)
    slow = reprefill if reprefill is not None else bound
    out["reprefill_vs_resume"] = round(slow / out["resume_ttft_s"], 1) if slow else None
    return out


def run(contexts: list[int], turns: int = 3, rounds: int = 3, real_upto: int = 4096,
        model: str | None = None) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="workbench-bench-model-") as tmp, \
            Engine() as engine:
        spec = model or str(_final(engine.submit(
            lambda _c, _e, _x: build_long_model(Path(tmp), max(contexts))),
            "building the model").value)
        _final(engine.load(spec), f"loading {spec}")
        per_token = None
        for context in sorted(contexts):
            result = bench_context(engine, context, turns, rounds, real_upto, per_token)
            if result["reprefill_ttft_s"] is not None:
                per_token = result["reprefill_ttft_s"] / result["history_tokens"]
            results.append(result)
    return results


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        kv = " (made-up K/V)" if r["made_up_kv"] else ""
        lines.append(f"context {r['history_tokens']} tokens{kv}")
        lines.append("  save per turn     before (whole file)   after (segment)   new tokens")
        for row in r["save_rows"]:
            lines.append(f"    {row['context_tokens']:>6} tokens   {row['before_ms']:>8.1f} ms "
                         f"{_mib(row['before_bytes']):>10}   {row['after_ms']:>7.1f} ms "
                         f"{_mib(row['after_bytes']):>10}   {row['new_tokens']}")
        rp = (f"{r['reprefill_ttft_s']:.3f} s" if r["reprefill_ttft_s"] is not None
              else f">= {r['reprefill_lower_bound_s']} s (bound)"
              if r["reprefill_lower_bound_s"] is not None else "not measured")
        lines.append(f"  time to first token: uninterrupted {r['uninterrupted_ttft_s']:.3f} s, "
                     f"resume from segments {r['resume_ttft_s']:.3f} s (load "
                     f"{r['resume_load_s']:.3f} s), resume from the whole file "
                     f"{r['resume_whole_ttft_s']:.3f} s, re-prefill {rp}")
        lines.append(f"  (fastest round: uninterrupted {r['uninterrupted_ttft_min_s']:.3f} s, "
                     f"resume from segments {r['resume_ttft_min_s']:.3f} s)")
        lines.append(f"  resume / uninterrupted = {r['resume_vs_uninterrupted']}x; "
                     f"re-prefill / resume = {r['reprefill_vs_resume']}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 32768])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--real-prefill-upto", type=int, default=4096)
    parser.add_argument("--model", help="a model folder (default: a long-context demo llama)")
    args = parser.parse_args(argv)
    results = run(args.contexts, args.turns, args.rounds, args.real_prefill_upto, args.model)
    print(report(results))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
