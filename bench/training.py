"""Training benchmark (issue 11): the workbench's training path against ``mlx_lm lora``
alone, and what training costs a chat that runs meanwhile.

1. ``python -m mlx_lm lora --train`` and ``TrainJob`` (what the app's Train screen and
   ``workbench train`` run: a child process with mlx-lm's trainer and a callback) on the same
   model, data and settings, alternating, ``--rounds`` each. Both report mlx-lm's own
   throughput per report window; the ratio compares the medians of the whole-run rates
   (tokens weighted), with and without the first window (which holds the compile/warm-up).
2. The decode rate of a chat reply (greedy, ``--chat-tokens`` tokens, end-of-sequence
   ignored) on the engine alone, then while a training run is going on in its child process,
   alternating. The warm-up turn is not counted.

Run: ``python -m bench.training [--model M --data DIR] [--iters N] [--rounds N]``; without
``--model`` it uses the demo kit's chat model and its training data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import Engine, SamplingParams, TurnDone, TurnOptions
from jobs.config import TrainConfig
from jobs.events import TrainProgress
from jobs.runner import TrainJob

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# mlx-lm's report line: "  10   4.472 ▼   1,234  ..." -> iteration, loss, tokens/s
_REPORT = re.compile(r"\s+(\d+)\s+([\d.]+) [▼▲=]?\s*([\d,]+(?:\.\d+)?)\s+")


def _settings(model: str, data: str, iters: int) -> dict[str, Any]:
    return {"model": model, "data": data, "iters": iters, "batch_size": 4,
            "steps_per_report": 10, "steps_per_eval": 10_000, "val_batches": 2,
            "save_every": 10_000, "learning_rate": 5e-4, "num_layers": -1,
            "max_seq_length": 512, "seed": 0}


def _flags(settings: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in settings.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _overall(rates: list[float], tokens: list[int], skip: int) -> float:
    """Tokens per second over the report windows from ``skip`` on (tokens weighted)."""
    windows = [tokens[0]] + [b - a for a, b in itertools.pairwise(tokens)]
    pairs = list(zip(windows, rates, strict=False))[skip:]
    return sum(n for n, _ in pairs) / sum(n / r for n, r in pairs if r > 0)


def _mlx_lm(settings: dict[str, Any], out: Path) -> tuple[list[float], float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlx_lm", "lora", "--train",
                           *_flags(settings), "--adapter-path", str(out)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    rates = []
    for line in _ANSI.sub("", proc.stdout).splitlines():
        match = _REPORT.match(line)
        if match:
            rates.append(float(match.group(3).replace(",", "")))
    return rates, wall


def _ours(settings: dict[str, Any], out: Path) -> tuple[list[float], list[float],
                                                        list[int], float]:
    shutil.rmtree(out, ignore_errors=True)
    job = TrainJob(TrainConfig.from_values({**settings, "adapter_path": str(out)}))
    start = time.perf_counter()
    job.start()
    progress = [e for e in job.events() if isinstance(e, TrainProgress)]
    wall = time.perf_counter() - start
    return ([p.tokens_per_second for p in progress], [p.iterations_per_second for p in progress],
            [p.trained_tokens for p in progress], wall)


def _decode(engine: Engine, tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    engine.reset().wait()
    done = engine.chat([{"role": "user", "content": "Tell me about the sea."}], params,
                       options=TurnOptions(ignore_eos=True)).wait()
    assert isinstance(done, TurnDone), done
    return done.stats.decode_tps


def run(model: str, data: str, iters: int, rounds: int, chat_tokens: int) -> dict[str, Any]:
    settings = _settings(model, data, iters)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ref_rates: list[list[float]] = []
    ours_rates: list[list[float]] = []
    ours_its: list[list[float]] = []
    walls: dict[str, list[float]] = {"mlx_lm": [], "workbench": []}
    tokens: list[int] = []
    try:
        for r in range(rounds):
            for who in (("mlx_lm", "workbench") if r % 2 == 0 else ("workbench", "mlx_lm")):
                if who == "mlx_lm":
                    rates, wall = _mlx_lm(settings, work / "ref")
                    ref_rates.append(rates)
                else:
                    rates, its, tokens, wall = _ours(settings, work / "ours")
                    ours_rates.append(rates)
                    ours_its.append(its)
                walls[who].append(wall)

        def median(rows: list[list[float]], skip: int) -> float:
            return statistics.median(_overall(r, tokens, skip) for r in rows)

        result: dict[str, Any] = {
            "model": model, "iters": iters, "rounds": rounds,
            "mlx_lm_tok_s": round(median(ref_rates, 0), 1),
            "workbench_tok_s": round(median(ours_rates, 0), 1),
            "ratio": round(median(ours_rates, 0) / median(ref_rates, 0), 3),
            "ratio_after_first_report": round(median(ours_rates, 1) / median(ref_rates, 1), 3),
            "workbench_it_s": round(statistics.median(statistics.median(i) for i in ours_its),
                                    2),
            "median_wall_s": {k: round(statistics.median(v), 1) for k, v in walls.items()},
        }

        # 2. a chat while training
        with Engine() as engine:
            engine.load(model).wait()
            _decode(engine, 16)  # warm-up, not counted
            alone, during = [], []
            for _ in range(rounds):
                alone.append(_decode(engine, chat_tokens))
                job = TrainJob(TrainConfig.from_values(
                    {**settings, "iters": 10_000, "adapter_path": str(work / "busy")}))
                shutil.rmtree(work / "busy", ignore_errors=True)
                job.start()
                for event in job.events(timeout=300):  # until mlx-lm trains (first report)
                    if isinstance(event, TrainProgress):
                        break
                during.append(_decode(engine, chat_tokens))
                job.cancel()
                job.wait(60)
        result.update({
            "chat_decode_tok_s_alone": round(statistics.median(alone), 1),
            "chat_decode_tok_s_while_training": round(statistics.median(during), 1),
            "chat_decode_ratio": round(statistics.median(during) / statistics.median(alone),
                                       3),
        })
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", help="model folder (default: the demo chat model)")
    parser.add_argument("--data", help="an mlx-lm data folder (default: the demo's)")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chat-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    model, data = args.model, args.data
    if model is None or data is None:
        from models.demo import ensure_demo
        from workbench.paths import demo_dir

        kit = ensure_demo(demo_dir())
        model = model or str(kit.chat)
        data = data or str(kit.train_data)
    print(json.dumps(run(model, data, args.iters, args.rounds, args.chat_tokens), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
