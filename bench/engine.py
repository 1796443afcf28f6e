"""``workbench bench``: the engine against raw mlx-lm, in one run, alternating.

Both sides run on the engine thread with the same model object, prompt, sampler and
prefill step, and both generate exactly ``--gen-tokens`` tokens (end-of-sequence masked), so
the ratio measures the engine's own overhead: events, queueing, prefix bookkeeping. The
engine side is timed where a user sees it, on the consumer's side of the event stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from engine import Engine, EngineCore, Error, ModelLoaded, SamplingParams, TokenText, TurnDone
from engine.sampling import mask_tokens

RAW_PREFILL_STEP = 2048  # mlx-lm's own default, as a script calling stream_generate gets it


def _text_of_tokens(core: EngineCore, n: int) -> str:
    """About ``n`` tokens of real text (Python's help topics) for a prompt."""
    from pydoc_data import topics

    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))[: 6 * max(n, 1)]
    ids = core.tokenizer.encode(text)[: max(n, 1)]
    return str(core.tokenizer.decode(ids))


def _raw_run(core: EngineCore, prompt: list[int], gen_tokens: int) -> dict[str, float]:
    """mlx-lm's stream_generate as a script would call it, fresh cache, eos masked."""
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    start = time.perf_counter()
    first = last = 0.0
    first_n = last_n = 0
    prompt_tps = 0.0
    for resp in stream_generate(core.model, core.tokenizer, mx.array(prompt),
                                max_tokens=gen_tokens, sampler=make_sampler(0.0),
                                logits_processors=[mask_tokens(core.tokenizer.eos_token_ids)],
                                prefill_step_size=RAW_PREFILL_STEP):
        now = time.perf_counter()
        if not first:
            first, first_n, prompt_tps = now, resp.generation_tokens, resp.prompt_tps
        last, last_n = now, resp.generation_tokens
    return {"ttft_s": first - start, "prefill_tps": prompt_tps,
            "decode_tps": (last_n - first_n) / (last - first) if last > first else 0.0}


def _engine_run(engine: Engine, messages: list[dict[str, str]],
                params: SamplingParams) -> dict[str, float]:
    start = time.perf_counter()
    first = last = 0.0
    first_n = last_n = 0
    stats = None
    for event in engine.chat(messages, params, ignore_eos=True):
        now = time.perf_counter()
        if isinstance(event, TokenText):
            if not first:
                first, first_n = now, event.generated
            last, last_n = now, event.generated
        elif isinstance(event, TurnDone):
            stats = event.stats
        elif isinstance(event, Error):
            raise SystemExit(f"workbench bench: {event.message}")
    assert stats is not None
    return {"ttft_s": first - start, "prefill_tps": stats.prefill_tps,
            "decode_tps": (last_n - first_n) / (last - first) if last > first else 0.0,
            "reused": stats.reused_tokens, "reply": stats.generated_tokens}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def measure(engine: Engine, prompt_tokens: int, gen_tokens: int, history_tokens: int,
            rounds: int) -> dict[str, Any]:
    """Run the comparison on the model ``engine`` has loaded."""
    params = SamplingParams(temperature=0.0, max_tokens=gen_tokens)

    def prepare(core: EngineCore, _emit: Any, _cancel: Any) -> tuple[list[dict[str, str]],
                                                                     list[int], str]:
        messages = [{"role": "user", "content": _text_of_tokens(core, prompt_tokens)}]
        return messages, core.render(messages), _text_of_tokens(core, history_tokens)

    prepared = engine.submit(prepare).wait()
    if isinstance(prepared, Error):
        raise SystemExit(f"workbench bench: {prepared.message}")
    messages, prompt_ids, history_text = prepared.value

    # Warm-up: compile kernels and fill allocator caches for both paths.
    engine.submit(lambda core, _e, _c: _raw_run(core, prompt_ids, 8)).wait()
    engine.reset().wait()
    _engine_run(engine, messages, params.with_values(max_tokens=8))

    raw_runs: list[dict[str, float]] = []
    engine_runs: list[dict[str, float]] = []
    for _ in range(rounds):
        result = engine.submit(lambda core, _e, _c: _raw_run(core, prompt_ids, gen_tokens))
        raw_runs.append(result.wait().value)
        engine.reset().wait()  # the engine must prefill from scratch too
        engine_runs.append(_engine_run(engine, messages, params))

    # Second turn of a long conversation, with and without the cached prefix.
    history = [{"role": "user", "content": history_text}]
    short = params.with_values(max_tokens=16)
    reuse, no_reuse = [], []
    for i in range(rounds):
        engine.reset().wait()
        first = _engine_run(engine, history, short)
        turn2 = [*history, {"role": "assistant", "content": "ok"},
                 {"role": "user", "content": f"And what follows from that? ({i})"}]
        del first
        reuse.append(_engine_run(engine, turn2, short))
        engine.reset().wait()
        no_reuse.append(_engine_run(engine, turn2, short))

    raw_decode = _median(raw_runs, "decode_tps")
    eng_decode = _median(engine_runs, "decode_tps")
    second = _median(reuse, "ttft_s")
    second_no = _median(no_reuse, "ttft_s")
    return {
        "prompt_tokens": len(prompt_ids),
        "gen_tokens": gen_tokens,
        "history_tokens": history_tokens,
        "rounds": rounds,
        "raw_prefill_step_size": RAW_PREFILL_STEP,
        "engine_prefill_chunks": "sized by time (about 0.25 s each)",
        "raw_decode_tps": round(raw_decode, 2),
        "engine_decode_tps": round(eng_decode, 2),
        "decode_ratio": round(eng_decode / raw_decode, 4) if raw_decode else 0.0,
        "raw_prefill_tps": round(_median(raw_runs, "prefill_tps"), 2),
        "engine_prefill_tps": round(_median(engine_runs, "prefill_tps"), 2),
        "raw_ttft_s": round(_median(raw_runs, "ttft_s"), 4),
        "ttft_s": round(_median(engine_runs, "ttft_s"), 4),
        "second_turn_ttft_s": round(second, 4),
        "second_turn_ttft_no_reuse_s": round(second_no, 4),
        "second_turn_speedup": round(second_no / second, 2) if second else 0.0,
        "second_turn_reused_tokens": int(statistics.median(r["reused"] for r in reuse)),
    }


def _table(results: dict[str, Any]) -> str:
    width = max(len(k) for k in results)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in results.items())


def run_bench(args: argparse.Namespace) -> int:
    from workbench.runtime import bench_model_path, on_engine

    say = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    results: dict[str, Any] = {}
    with Engine() as engine:
        model = args.model or str(on_engine(engine, lambda: bench_model_path(say)))
        results["model"] = model
        loaded = engine.load(model).wait()
        if not isinstance(loaded, ModelLoaded):
            print(f"workbench bench: {getattr(loaded, 'message', loaded)}", file=sys.stderr)
            return 1
        results["backend"] = on_engine(engine, _backend)
        # The load's GPU kernel warm-up (engine/warmup.py) runs before any figure is taken.
        results["load_warm_up"] = "excluded from every figure (part of the load, GPU only)"
        say(f"benchmarking {loaded.info.name}: {args.rounds} alternating rounds")
        results.update(measure(engine, args.prompt_tokens, args.gen_tokens,
                               args.history_tokens, args.rounds))
    if args.tui:
        from bench.tui import run_tui_bench

        say("running the app headless")
        results.update(run_tui_bench(model))
    if args.adapters:
        from bench.adapters import BenchError, run_adapter_bench

        say("measuring adapter swaps" + ("" if args.no_big else
                                         " (and building a ~0.5B model: slow on a CPU)"))
        try:
            results.update(run_adapter_bench(args.model, rounds=args.rounds,
                                             big=not args.no_big))
        except BenchError as exc:
            print(f"workbench bench: {exc}", file=sys.stderr)
            return 1
    if args.sessions:
        from bench.sessions import run_session_bench

        say("measuring session resume")
        results.update(run_session_bench(args.model))
    print(json.dumps(results, indent=2) if args.json else _table(results))
    return 0


def _backend() -> str:
    import mlx.core as mx

    return str(mx.default_device())


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.engine [bench] FLAGS``: ``workbench bench``'s flags, read by the
    workbench's own parser (benchmarks stand above the faces and may use them)."""
    from workbench.cli import build_parser

    args = list(sys.argv[1:] if argv is None else argv)
    return run_bench(build_parser().parse_args(args if args[:1] == ["bench"] else
                                                ["bench", *args]))


if __name__ == "__main__":
    sys.exit(main())
