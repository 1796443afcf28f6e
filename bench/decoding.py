"""Benchmark for faster decoding (issue 12): speculative decoding with a draft model and
prompt lookup, against plain decoding, in alternating rounds of one run.

1. **Draft model.** The same greedy turn decoded plainly, with the model as its own draft
   (every draft is accepted: what the verify step costs at best) and with a smaller draft
   (``--draft-model``, by default the demo model's 4-bit twin). Decode tokens/s, speedup,
   and the share of drafted tokens accepted.
2. **Prompt lookup on an edit task.** The prompt holds a long text and asks for it back
   with one word changed; greedy. A model that follows the instruction copies the text,
   which lookup predicts. (The demo's random-weight models do not follow instructions:
   what lookup finds there is their own repetitions.)
3. **Prompt lookup on text it cannot predict.** A question sampled at temperature 1 (a
   fixed seed): no n-gram recurs, so nothing is drafted and only the lookups cost; and
   ("norepeat") the edit task decoded greedily with a repetition penalty of 1.3: the
   text's n-grams recur but the reply avoids repeating them, so drafts fail and lookup
   must turn itself down. Target: at most 3% slower than plain decoding.

Every mode gives the same greedy tokens as plain decoding (tests/test_speculative.py), so
the rounds time the same reply. Besides wall-clock decode tokens/s (mlx-lm's
generation_tps), the CPU time of decoding per token is printed: on a shared machine it is
the steadier of the two. Run:
``python -m bench.decoding [--model M] [--draft-model D] [--gen-tokens N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

from common.errors import WorkbenchError
from engine import Engine, SamplingParams, TokenText, TurnDone
from engine.speculative import DecodingSettings


def _text(core: Any, tokens: int) -> str:
    """About ``tokens`` tokens of real text (Python's help topics)."""
    from pydoc_data import topics

    text = topics.topics["for"] + "\n" + topics.topics["while"] + "\n" + topics.topics["if"]
    words = text.split()
    out: list[str] = []
    while words and len(core.tokenizer.encode(" ".join(out))) < tokens:
        out.extend(words[:20])
        words = words[20:]
    return " ".join(out)


def _prepare(spec: str | None, text_tokens: int) -> Any:
    def job(core: Any, emit: Any, cancel: threading.Event) -> tuple[Any, Any, str]:
        from engine.speculative import DraftModel, load_draft
        from models.resolve import resolve_model

        loaded = core.require()
        own = DraftModel(f"{loaded.info.name} (itself)", "itself", loaded.model,
                         loaded.tokenizer, 0)
        small = None
        if spec:
            path = resolve_model(spec, emit, cancel)
            small = load_draft(spec, path, loaded.tokenizer, loaded.info.name,
                               core.memory_probe, 4096)
        return own, small, _text(core, text_tokens)

    return job


def _turn(messages: list[dict[str, str]], params: SamplingParams, draft: Any,
          decoding: DecodingSettings) -> Any:
    def job(core: Any, _emit: Any, cancel: threading.Event) -> Any:
        core.reset_cache()
        core.draft = draft
        core.set_decoding(decoding)
        final, cpu = None, 0.0
        for event in core.turn(messages, params, cancel, time.perf_counter()):
            if isinstance(event, TokenText) and not cpu:
                cpu = time.process_time()  # decoding starts: the prompt has been read
            if isinstance(event, TurnDone):
                final = event
        assert final is not None
        # CPU seconds of decoding per generated token (after the first): steadier than the
        # wall clock on a shared machine.
        spent = time.process_time() - cpu if cpu else 0.0
        return final, spent / max(1, final.stats.generated_tokens - 1)

    return job


def _summary(runs: list[Any], base: float, base_cpu: float) -> dict[str, Any]:
    tps = statistics.median(r.stats.decode_tps for r, _cpu in runs)
    cpu = statistics.median(c for _r, c in runs)
    rates = [r.stats.acceptance_rate for r, _c in runs if r.stats.acceptance_rate is not None]
    runs = [r for r, _c in runs]
    return {"decode_tps": round(tps, 1), "speedup": round(tps / base, 3) if base else None,
            "cpu_ms_per_token": round(1000 * cpu, 2),
            "cpu_ratio": round(cpu / base_cpu, 3) if base_cpu else None,
            "acceptance_rate": round(statistics.mean(rates), 3) if rates else None,
            "draft_tokens": runs[-1].stats.draft_tokens,
            "generated": runs[-1].stats.generated_tokens,
            "rounds_tps": [round(r.stats.decode_tps, 1) for r in runs]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model
    draft_spec = args.draft_model
    if not model:
        from models.demo import ensure_demo
        from workbench import paths

        kit = ensure_demo(paths.demo_dir())
        model, draft_spec = str(kit.llama), draft_spec or str(kit.llama_4bit)
    results: dict[str, Any] = {"model": model, "draft_model": draft_spec,
                               "gen_tokens": args.gen_tokens, "rounds": args.rounds}
    with Engine() as engine:
        engine.load(model).result_sync()
        own, small, text = engine.submit(_prepare(draft_spec, args.text_tokens)).result_sync()
        greedy = SamplingParams(max_tokens=args.gen_tokens)
        question = [{"role": "user", "content": "Explain how a for loop works in Python."}]
        edit = [{"role": "user", "content": f"Here is a text:\n\n{text}\n\nRepeat the text "
                 "exactly, word for word, but write 'list' instead of 'sequence'."}]
        plain, lookup = DecodingSettings(), DecodingSettings(prompt_lookup=args.lookup)
        drafting = DecodingSettings(num_draft_tokens=args.num_draft_tokens)
        sampled = SamplingParams(temperature=1.0, seed=1, max_tokens=args.gen_tokens)
        # Greedy, but repeating is penalised: the n-grams of the text match, their
        # continuations mostly do not (drafts that fail).
        no_repeats = SamplingParams(repetition_penalty=1.3, max_tokens=args.gen_tokens)
        cases: dict[str, tuple[list[dict[str, str]], SamplingParams, Any, DecodingSettings]]
        cases = {
            "draft/plain": (question, greedy, None, plain),
            "draft/itself": (question, greedy, own, drafting),
            "edit/plain": (edit, greedy, None, plain),
            "edit/lookup": (edit, greedy, None, lookup),
            "unpredictable/plain": (question, sampled, None, plain),
            "unpredictable/lookup": (question, sampled, None, lookup),
            "norepeat/plain": (edit, no_repeats, None, plain),
            "norepeat/lookup": (edit, no_repeats, None, lookup),
        }
        if small is not None:
            cases["draft/small"] = (question, greedy, small, drafting)
        runs: dict[str, list[Any]] = {name: [] for name in cases}
        for messages, params, draft, decoding in cases.values():  # warm-up
            engine.submit(_turn(messages, params, draft, decoding)).result_sync()
        for _ in range(args.rounds):
            for name, (messages, params, draft, decoding) in cases.items():
                runs[name].append(engine.submit(
                    _turn(messages, params, draft, decoding)).result_sync())
        engine.submit(_turn(question, greedy, None, plain)).result_sync()
    for group in ("draft", "edit", "unpredictable", "norepeat"):
        base = statistics.median(r.stats.decode_tps for r, _c in runs[f"{group}/plain"])
        base_cpu = statistics.median(c for _r, c in runs[f"{group}/plain"])
        for name in runs:
            if name.startswith(group + "/"):
                results[name] = _summary(runs[name], base, base_cpu)
    for name in ("draft/itself", "draft/small", "edit/lookup", "norepeat/lookup"):
        if runs.get(name):  # exactness: every mode wrote the plain reply
            plain_text = runs[name.split("/")[0] + "/plain"][0][0].text
            results[name]["same_reply"] = all(r.text == plain_text for r, _c in runs[name])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decoding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", help="model folder or repo id (default: the demo llama)")
    p.add_argument("--draft-model", help="the smaller draft (default with the demo: its "
                                         "4-bit twin)")
    p.add_argument("--num-draft-tokens", type=int, default=3)
    p.add_argument("--lookup", type=int, default=10, help="prompt lookup's longest draft")
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--text-tokens", type=int, default=300,
                   help="length of the text in the edit task")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        results = run(args)
    except WorkbenchError as exc:
        print(f"bench.decoding: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"model {results['model']}, draft {results['draft_model']}, "
          f"{args.gen_tokens} tokens, {args.rounds} alternating rounds (medians)")
    for name, row in results.items():
        if not isinstance(row, dict):
            continue
        rate = "" if row["acceptance_rate"] is None else \
            f", accepted {100 * row['acceptance_rate']:.0f}% of drafts"
        same = "" if "same_reply" not in row else \
            f", same reply: {'yes' if row['same_reply'] else 'NO'}"
        print(f"  {name:<22} {row['decode_tps']:7.1f} tok/s  x{row['speedup']:.3f}  "
              f"cpu {row['cpu_ms_per_token']:.2f} ms/tok x{row['cpu_ratio']:.3f}"
              f"{rate}{same}  ({row['generated']} tokens; rounds {row['rounds_tps']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
