"""One process against two ranks (issue 14): decode tokens/s, time to first token, memory.

    python -m bench.distributed --model PATH [--gen-tokens 64] [--prompt-tokens 256]
                                [--shards tensor,pipeline] [--ranks 2] [--json]

Each configuration runs in fresh processes: one plain ``python -m bench.distributed --worker``
for the single process, ``mlx.launch -n RANKS --backend ring`` (localhost) for each split.
The worker loads the model through the engine (the sharded load under mlx.launch), runs one
warm-up turn and then ``--rounds`` timed turns of exactly ``--gen-tokens`` tokens (end of
sequence masked) on a fresh cache, and prints one JSON line: rank 0's time to first token
and decode rate (medians), the per-token sync time, and per rank the weights held, the peak
MLX memory while loading and during a turn.

On one machine the ranks share its cores and memory bandwidth: this measures the overhead of
the split and how memory divides, not a speed-up (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARK = "BENCH-DISTRIBUTED "


def _prompt(tokenizer: Any, n: int) -> str:
    from pydoc_data import topics

    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))[: 6 * max(n, 1)]
    return str(tokenizer.decode(tokenizer.encode(text)[: max(n, 1)]))


def worker(args: argparse.Namespace) -> int:
    """One configuration, in this process (rank 0 of a launch, or alone)."""
    from engine import distributed

    world = distributed.join(args.shard) if distributed.launched() else None
    if world is not None and world.rank != 0:
        from engine.distributed_core import follow

        return follow(world)
    import mlx.core as mx

    from engine import Engine, SamplingParams
    from engine.sampling import TurnOptions

    with Engine() as engine:
        load_peak = 0
        if world is None:  # the single process's load peak, measured the same way
            def plain_load(_core: Any, _emit: Any, _cancel: Any) -> int:
                from mlx_lm import load

                mx.reset_peak_memory()
                model = load(args.model)
                peak = int(mx.get_peak_memory())
                del model
                mx.clear_cache()
                return peak

            load_peak = engine.submit(plain_load).result_sync()
        info = engine.load(args.model).result_sync()
        prompt = engine.submit(lambda core, _e, _c: _prompt(core.tokenizer,
                                                            args.prompt_tokens)).result_sync()
        params = SamplingParams(max_tokens=args.gen_tokens)
        options = TurnOptions(ignore_eos=True)
        runs = []
        for i in range(args.rounds + 1):
            engine.reset().result_sync()
            done = engine.chat([{"role": "user", "content": prompt}], params,
                               options=options).result_sync()
            if i:  # the first turn warms up
                runs.append(done.stats)
    w = info.world
    last = runs[-1]
    result = {
        "config": "1 process" if w is None else f"{w.size} ranks {w.shard}",
        "ttft_s": statistics.median(s.ttft_s for s in runs),
        "decode_tps": statistics.median(s.decode_tps for s in runs),
        "comm_ms_per_token": None if w is None else
        statistics.median(s.comm_ms_per_token or 0.0 for s in runs),
        "weights": list(w.weight_bytes) if w else [info.weight_bytes],
        "load_peak": list(w.load_peak_bytes) if w else [load_peak],
        "turn_peak": list(last.rank_peak_memory) if w else [last.peak_memory],
        "layers": [list(r) for r in w.layers] if w else [],
    }
    print(MARK + json.dumps(result), flush=True)
    return 0


def free_ports(count: int = 2) -> int:
    """A starting port with ``count`` free ports after it on localhost (the ring backend's
    ranks listen there; other runs may be using ports too). The tests use it as well."""
    import random

    for _ in range(50):
        start = random.randrange(20000, 60000)
        try:
            for port in range(start, start + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start
    raise RuntimeError("no free ports")


def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # stdin stays open: mlx.launch spins at EOF on its own stdin
        out, err = _wait(proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    for line in out.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]))
    raise RuntimeError(f"{' '.join(cmd[:6])}... gave no result:\n{err[-2000:]}")


def _wait(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    import threading

    parts: dict[str, list[str]] = {"out": [], "err": []}

    def read(name: str, stream: Any) -> None:
        parts[name].append(stream.read())

    threads = [threading.Thread(target=read, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    proc.wait(timeout)
    for t in threads:
        t.join(10)
    return "".join(parts["out"]), "".join(parts["err"])


def _mb(values: list[int]) -> str:
    return " / ".join(f"{v / 1e6:.0f}" for v in values) + " MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", required=True, help="a model folder")
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--shards", default="tensor,pipeline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shard", default="tensor", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    launch = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or \
        shutil.which("mlx.launch")
    if launch is None:
        print("bench.distributed: mlx.launch is not installed (pip install mlx)",
              file=sys.stderr)
        return 2
    common = ["-m", "bench.distributed", "--worker", "--model", str(Path(args.model).resolve()),
              "--gen-tokens", str(args.gen_tokens), "--prompt-tokens", str(args.prompt_tokens),
              "--rounds", str(args.rounds)]
    results = [_run([sys.executable, *common], args.timeout)]
    for shard in [s for s in args.shards.split(",") if s]:
        start = time.perf_counter()
        results.append(_run([launch, "-n", str(args.ranks), "--backend", "ring",
                             "--starting-port", str(free_ports(args.ranks)), "--",
                             sys.executable, *common, "--shard", shard], args.timeout))
        results[-1]["wall_s"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps({"model": args.model, "gen_tokens": args.gen_tokens,
                          "prompt_tokens": args.prompt_tokens, "results": results}))
        return 0
    one = results[0]
    print(f"model {args.model}: {args.prompt_tokens}-token prompt, {args.gen_tokens} tokens, "
          f"median of {args.rounds}, ring backend on localhost ({os.cpu_count()} CPUs)")
    print(f"{'config':<20}{'decode tok/s':>13}{'ttft':>9}{'sync/tok':>10}  "
          "weights | load peak | turn peak (per rank)")
    for r in results:
        sync = "" if r["comm_ms_per_token"] is None else f"{r['comm_ms_per_token']:.2f} ms"
        print(f"{r['config']:<20}{r['decode_tps']:>13.1f}{r['ttft_s'] * 1000:>7.0f}ms"
              f"{sync:>10}  {_mb(r['weights'])} | {_mb(r['load_peak'])} | "
              f"{_mb(r['turn_peak'])}")
    for r in results[1:]:
        ratio = max(r["load_peak"]) / max(1, one["load_peak"][0])
        turn = max(r["turn_peak"]) / max(1, one["turn_peak"][0])
        print(f"{r['config']}: largest rank's load peak {ratio:.2f}x, turn peak {turn:.2f}x "
              f"the single process's; decode {r['decode_tps'] / max(one['decode_tps'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
