"""``python -m bench.warmup --model M``: what a load's GPU warm-up costs and what it saves.

Loads ``M`` in a fresh engine (``--warm-up auto|on|off``), then sends
two replies on a prompt of about ``--prompt`` tokens and prints, as one JSON line: the load
time without the warm-up (``load_s``), the warm-up's own seconds (``warmup_s``), the first
reply's time to first token and total (``first_ttft_s``, ``first_total_s``) and the same for
a second, different prompt (``second_*``). Run it twice with the same ``MLX_PTX_CACHE_DIR``
to see what MLX's on-disk kernel cache saves a second process. Every MLX call runs on the
engine thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from engine import Engine, LoadProgress, SamplingParams, TokenText, TurnDone


def _reply(engine: Engine, words: int, offset: int, max_tokens: int) -> dict[str, float]:
    text = " ".join(f"w{(i * 31 + offset) % 997}" for i in range(words))
    start = time.perf_counter()
    first = None
    stream = engine.chat([{"role": "user", "content": text}],
                         SamplingParams(temperature=0.0, max_tokens=max_tokens),
                         ignore_eos=True)
    done: Any = None
    for event in stream:
        if isinstance(event, TokenText) and first is None:
            first = time.perf_counter() - start
        if isinstance(event, TurnDone):
            done = event
    total = time.perf_counter() - start
    prompt = done.stats.prompt_tokens if done is not None else 0
    return {"ttft_s": round(first or total, 3), "total_s": round(total, 3),
            "prompt_tokens": prompt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warmup",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--warm-up", choices=("auto", "on", "off"), default="auto",
                        help="auto: on GPU backends only (the engine's default)")
    parser.add_argument("--prompt", type=int, default=300, help="prompt words (about tokens)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    warm_s = 0.0
    choice = {"auto": None, "on": True, "off": False}[args.warm_up]
    with Engine(warm_up=choice) as engine:
        start = time.perf_counter()
        marks: dict[str, float] = {}
        for event in engine.load(args.model):
            if isinstance(event, LoadProgress):
                marks.setdefault(event.stage, time.perf_counter() - start)
        wall = time.perf_counter() - start
        if "warm-up" in marks and "ready" in marks:
            warm_s = marks["ready"] - marks["warm-up"]
        first = _reply(engine, args.prompt, 0, args.max_tokens)
        second = _reply(engine, args.prompt + 37, 5, args.max_tokens)
    print(json.dumps({
        "model": args.model, "warm_up": args.warm_up,
        "load_s": round(wall - warm_s, 3), "warmup_s": round(warm_s, 3),
        "load_wall_s": round(wall, 3),
        "first_ttft_s": first["ttft_s"], "first_total_s": first["total_s"],
        "second_ttft_s": second["ttft_s"], "second_total_s": second["total_s"],
        "prompt_tokens": first["prompt_tokens"],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
