"""How a reply's statistics read, in every face: one place for the words and the numbers."""

from __future__ import annotations

from engine import TurnStats

FINISH_WORDS = {
    "stop": "done",
    "length": "stopped at max tokens",
    "context": "stopped: the context is full",
    "cancelled": "cancelled",
}


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 token``, ``2 tokens`` (``words``: the plural when it is not ``word`` + s)."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def finish_words(reason: str) -> str:
    return FINISH_WORDS.get(reason, reason)


def seconds(s: float) -> str:
    """``640 ms`` under a second, ``2.4 s`` above."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def format_stats(stats: TurnStats) -> str:
    """The full line for line mode (``generate`` on stderr, ``chat --plain``'s /stats)."""
    return (f"prompt {stats.prompt_tokens} tok ({stats.reused_tokens} reused, "
            f"{stats.prefill_tokens} prefilled at {stats.prefill_tps:.1f} tok/s) | "
            f"first token {seconds(stats.ttft_s)} | "
            f"{stats.generated_tokens} tok at {stats.decode_tps:.1f} tok/s | "
            f"{stats.finish_reason} | peak {stats.peak_memory / 1e6:.0f} MB"
            + (f" | {decoding_words(stats)}" if stats.decoder or stats.kv_cache else ""))


def decoding_words(stats: TurnStats) -> str:
    """How the reply was decoded: "draft llama-4bit 17/69 accepted (25%)", the KV bits."""
    parts = []
    if stats.decoder:
        rate = f" ({100 * stats.acceptance_rate:.0f}%)" if stats.acceptance_rate is not None \
            else ""
        parts.append(f"{stats.decoder} {stats.draft_tokens}/{stats.draft_proposed} "
                     f"accepted{rate}")
    if stats.kv_cache:
        parts.append(f"KV {stats.kv_cache.split(':')[0].removeprefix('kv')}-bit")
    return ", ".join(parts)


def turn_summary(stats: TurnStats) -> str:
    """The quiet line under a reply in the app: tokens, rate, first token, reuse, finish."""
    parts = [plural(stats.generated_tokens, "token")]
    if stats.generated_tokens:
        parts.append(f"{stats.decode_tps:.1f} tok/s")
        parts.append(f"first token {seconds(stats.ttft_s)}")
    if stats.reused_tokens:
        parts.append(f"{plural(stats.reused_tokens, 'prompt token')} from cache")
    parts.append(finish_words(stats.finish_reason))
    return " · ".join(parts)
