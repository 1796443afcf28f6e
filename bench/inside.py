"""Benchmark for seeing inside a conversation (issue 13): what the probability view costs,
and what a branch's kept cache saves.

1. Decode rate with logprobs off and on (top 5 per token: the app's probability view),
   alternating rounds on the same prompt, greedy, a fixed number of tokens.
2. Time to first token when switching back to a branch: a conversation (branch A, a few
   turns of real text), then the first message edited (branch B), then A again; once with
   the branch caches (the engine's default) and once with them off (every switch prefills
   again from the shared start).

Run: ``python -m bench.inside [--model M] [--gen-tokens N] [--history-tokens N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from engine import Engine, SamplingParams, TurnDone, TurnOptions

from .sessions import _filler as _text  # the same real text, cut into messages
from .sessions import _final


def _turn(engine: Engine, messages: list[dict[str, str]], params: SamplingParams,
          options: TurnOptions | None = None) -> TurnDone:
    done = _final(engine.chat(messages, params, options=options), "a turn")
    assert isinstance(done, TurnDone)
    return done


def run(model: str, gen_tokens: int = 256, history_tokens: int = 1500,
        rounds: int = 3) -> dict[str, Any]:
    with Engine() as engine:
        _final(engine.load(model), "loading the model")
        greedy = SamplingParams(temperature=0.0, max_tokens=gen_tokens)
        prompt = [{"role": "user", "content": "Write about Python's for statement."}]
        _turn(engine, prompt, greedy, TurnOptions(ignore_eos=True))  # warm-up, not counted
        off: list[float] = []
        on: list[float] = []
        for _ in range(rounds):
            engine.reset().wait()
            off.append(_turn(engine, prompt, greedy, TurnOptions(ignore_eos=True))
                       .stats.decode_tps)
            engine.reset().wait()
            on.append(_turn(engine, prompt, greedy, TurnOptions(ignore_eos=True, logprobs=5))
                      .stats.decode_tps)

        short = SamplingParams(temperature=0.0, max_tokens=16)
        parts = _text(engine, history_tokens, 3)

        def switch_back(shelf: bool) -> tuple[float, int]:
            def set_shelf(core: Any, _e: Any, _c: Any) -> None:
                core.reset_cache()
                core.caches.shelf_bytes = (2 << 30) if shelf else 0

            _final(engine.submit(set_shelf), "setting the branch caches")
            a: list[dict[str, str]] = []
            for part in parts:
                a.append({"role": "user", "content": part})
                a.append({"role": "assistant", "content": _turn(engine, a, short).text})
            b = [{"role": "user", "content": "Something else entirely."}]
            _turn(engine, b, short)
            back = _turn(engine, [*a, {"role": "user", "content": "Thanks."}], short)
            return back.stats.ttft_s, back.stats.reused_tokens

        kept, cold = [], []
        for _ in range(rounds):
            kept.append(switch_back(True))
            cold.append(switch_back(False))
    kept_ttft = statistics.median(t for t, _ in kept)
    cold_ttft = statistics.median(t for t, _ in cold)
    return {
        "model": model,
        "decode_tps_logprobs_off": round(statistics.median(off), 1),
        "decode_tps_logprobs_on": round(statistics.median(on), 1),
        "logprobs_ratio": round(statistics.median(on) / statistics.median(off), 3),
        "branch_switch_ttft_s_cached": round(kept_ttft, 4),
        "branch_switch_ttft_s_reprefill": round(cold_ttft, 4),
        "branch_switch_speedup": round(cold_ttft / kept_ttft, 1) if kept_ttft else None,
        "reused_tokens_cached": kept[-1][1],
        "reused_tokens_reprefill": cold[-1][1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inside", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", help="model folder or repo id (default: the demo "
                                              "kit's llama)")
    parser.add_argument("--gen-tokens", type=int, default=256)
    parser.add_argument("--history-tokens", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        from models.demo import ensure_demo
        from workbench.paths import demo_dir

        model = str(ensure_demo(demo_dir()).llama)
    print(json.dumps(run(model, args.gen_tokens, args.history_tokens, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
