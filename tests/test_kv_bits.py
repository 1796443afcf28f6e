"""KV-cache quantization (``--kv-bits``): replies equal mlx-lm's ``stream_generate`` with the
same ``kv_bits``/``kv_group_size``/``quantized_kv_start``, on a first turn and on a second turn
that reuses the quantized cache; other KV settings never reuse a cache; the fit check and
the model facts count the cache at the chosen context and bits.

Where the cache is converted matters: tokens read before the conversion attend to
full-precision keys, later ones to quantized keys. The engine converts where mlx-lm would
(after its prefill chunks, counted from the first token a turn reads, and after each decode
step), so a second turn equals mlx-lm carrying its prompt cache from turn to turn, fed the
tokens the cache lacks (what ``mlx_lm.chat`` and prompt-cache files do). While nothing has
been converted yet (``quantized_kv_start`` beyond the conversation) it also equals a fresh
run of the whole conversation.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine, ModelLoaded, SamplingParams, TurnDone
from engine.prompt_cache import common_prefix
from engine.speculative import DecodingSettings, KVSettings
from models.fit import estimate_kv_bytes, fit_report

MAX = 20
FIRST = [{"role": "user", "content": "Tell me about the for statement and lists."}]


def _slot(core: Any) -> Any:
    """The active cache slot (engine thread)."""
    return core.caches.get(core.cache_key)


def kv_engine(demo_kit, kv: KVSettings, **kwargs) -> Engine:
    engine = Engine(decoding=DecodingSettings(kv=kv), **kwargs)
    assert isinstance(engine.load(str(demo_kit.llama)).wait(120), ModelLoaded)
    return engine


class MlxLmChat:
    """mlx-lm alone: one prompt cache carried over the turns, trimmed to what the next
    prompt shares with it, fed the rest, with the KV settings (as mlx_lm.chat would)."""

    def __init__(self, path, kv: KVSettings) -> None:
        from mlx_lm import load
        from mlx_lm.models.cache import make_prompt_cache

        self.model, self.tokenizer = load(str(path))
        self.cache = make_prompt_cache(self.model)
        self.tokens: list[int] = []
        self.kv = kv

    def reply(self, messages: list[dict[str, str]]) -> str:
        from mlx_lm import stream_generate
        from mlx_lm.models.cache import trim_prompt_cache

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        held = self.tokens[: self.cache[0].offset]
        keep = min(common_prefix(held, prompt), len(prompt) - 1)
        trim_prompt_cache(self.cache, self.cache[0].offset - keep)
        out = list(stream_generate(self.model, self.tokenizer, prompt[keep:], max_tokens=MAX,
                                   prompt_cache=self.cache, kv_bits=self.kv.bits,
                                   kv_group_size=self.kv.group_size,
                                   quantized_kv_start=self.kv.start))
        self.tokens = prompt + [r.token for r in out]
        return "".join(r.text for r in out)


def fresh(path, messages, kv: KVSettings) -> str:
    return MlxLmChat(path, kv).reply(messages)


def second_turn(first_reply: str) -> list[dict[str, str]]:
    return [*FIRST, {"role": "assistant", "content": first_reply},
            {"role": "user", "content": "And the while statement?"}]


@pytest.mark.parametrize("start", [0, 24])
def test_kv_bits_replies_equal_mlx_lm_turn_after_turn(demo_kit, start) -> None:
    kv = KVSettings(bits=8, group_size=64, start=start)
    reference = MlxLmChat(demo_kit.llama, kv)
    with kv_engine(demo_kit, kv) as engine:
        one = engine.chat(FIRST, SamplingParams(max_tokens=MAX)).wait(120)
        assert isinstance(one, TurnDone) and one.stats.kv_cache == f"kv8:g64:s{start}"
        assert one.text == reference.reply(FIRST) == fresh(demo_kit.llama, FIRST, kv)
        messages = second_turn(one.text)
        two = engine.chat(messages, SamplingParams(max_tokens=MAX)).wait(120)
        assert isinstance(two, TurnDone) and two.stats.reused_tokens > 0
        assert two.text == reference.reply(messages)
        kinds = engine.submit(lambda core, _e, _c: {
            type(c).__name__ for c in _slot(core).cache}).result_sync()
        assert kinds == {"QuantizedKVCache"}


def test_before_the_conversion_a_reused_turn_equals_a_fresh_whole_run(demo_kit) -> None:
    """Quantization starts inside the second reply: the reused first turn was full
    precision, as in a fresh mlx-lm run of the whole conversation."""
    with Engine() as probe:
        probe.load(str(demo_kit.llama)).result_sync()
        plain = probe.chat(FIRST, SamplingParams(max_tokens=MAX)).result_sync()
        length = len(probe.submit(lambda core, _e, _c: core.render(
            second_turn(plain.text))).result_sync())
    kv = KVSettings(bits=4, group_size=64, start=length + 6)
    with kv_engine(demo_kit, kv) as engine:
        one = engine.chat(FIRST, SamplingParams(max_tokens=MAX)).result_sync()
        assert one.text == plain.text  # nothing was quantized yet
        messages = second_turn(one.text)
        two = engine.chat(messages, SamplingParams(max_tokens=MAX)).result_sync()
        assert two.stats.reused_tokens > 0
        assert two.text == fresh(demo_kit.llama, messages, kv)


def test_other_kv_settings_never_reuse_a_cache(demo_kit) -> None:
    with kv_engine(demo_kit, KVSettings(bits=8, start=0)) as engine:
        engine.chat(FIRST, SamplingParams(max_tokens=8)).result_sync()
        assert engine.submit(lambda core, _e, _c: core.kv_identity()).result_sync() \
            == "kv8:g64:s0"
        engine.set_decoding(DecodingSettings(kv=KVSettings(bits=4, start=0))).result_sync()
        again = engine.chat(FIRST, SamplingParams(max_tokens=8)).result_sync()
        assert again.stats.reused_tokens == 0 and again.stats.kv_cache == "kv4:g64:s0"
        assert engine.info is not None and engine.info.kv_label == "4-bit"


def test_the_fit_counts_the_chosen_context_at_its_bits(demo_kit) -> None:
    import json

    config = json.loads((demo_kit.llama / "config.json").read_text())
    full = estimate_kv_bytes(config, 1024)
    eight = estimate_kv_bytes(config, 1024, kv_bits=8)
    assert full == 1024 * 4 * 2 * 2 * 64 * 4  # layers, K and V, kv heads, head dim, fp32
    # 8 bits per value plus a float32 scale and bias per group of 64 values.
    assert eight == full // 4 + full // 4 // 64 * 2 * 4
    report = fit_report(demo_kit.llama, 1 << 40, 1024, kv_bits=8, extra=1000,
                        extra_label="draft")
    assert report.kv == eight and report.need == report.weights + eight + report.overhead \
        + 1000
    assert "8-bit" in report.message() and "draft" in report.message()
    with kv_engine(demo_kit, KVSettings(bits=8), max_kv_size=1024) as engine:
        info = engine.info
        assert info is not None and info.context_tokens == 1024
        assert info.kv_context_bytes == eight and info.kv_label == "8-bit"


def test_kv_bits_with_a_draft_model_equal_mlx_lm_s_speculative_run(demo_kit) -> None:
    """mlx-lm's speculative step quantizes both caches in halves of one list: the engine's
    cache slots get the quantized layers (and the reply equals mlx-lm's)."""
    from mlx_lm import load, stream_generate

    kv = KVSettings(bits=8, group_size=64, start=0)
    with kv_engine(demo_kit, kv) as engine:
        engine.load_draft(str(demo_kit.llama_4bit)).result_sync()
        done = engine.chat(FIRST, SamplingParams(max_tokens=MAX)).result_sync()
        assert done.stats.decoder == "draft llama-4bit"
        kinds = engine.submit(lambda core, _e, _c: (
            {type(c).__name__ for c in _slot(core).cache},
            {type(c).__name__ for c in _slot(core).draft.cache})).result_sync()
        assert kinds == ({"QuantizedKVCache"}, {"QuantizedKVCache"})
    model, tokenizer = load(str(demo_kit.llama))
    draft, _ = load(str(demo_kit.llama_4bit))
    prompt = tokenizer.apply_chat_template(FIRST, add_generation_prompt=True)
    reference = "".join(r.text for r in stream_generate(
        model, tokenizer, prompt, max_tokens=MAX, draft_model=draft, num_draft_tokens=3,
        kv_bits=8, kv_group_size=64, quantized_kv_start=0))
    assert done.text == reference


def test_the_session_and_the_config_keep_the_kv_settings() -> None:
    from sessions.transcript import Session, parse_session
    from workbench.config import parse_config

    session = Session(name="s", kv=KVSettings(bits=8, start=0).to_dict())
    again = parse_session("s", session.to_toml())
    assert again.kv == {"bits": 8, "group_size": 64, "start": 0} and not again.problems
    assert parse_session("s", Session(name="s").to_toml()).kv == {}  # no [kv]: full precision
    bad = parse_session("s", session.to_toml().replace("bits = 8", "bits = 7"))
    assert bad.kv == {} and "[kv]" in bad.problems[0]
    config = parse_config({"decoding": {"kv_bits": 8, "prompt_lookup": 99}})
    assert config.decoding == {"kv_bits": 8} and "--prompt-lookup 99" in config.problems[0]


def test_a_session_cache_of_other_kv_settings_is_rebuilt_not_reused(demo_kit, tmp_path) -> None:
    """A saved prompt cache holds entries written under one KV quantization; resumed under
    another, it is set aside with a notice and the transcript is read again (the reply then
    equals a fresh run under the new settings), instead of mixing the two."""
    from engine import Engine, ModelLoaded, SamplingParams
    from engine.speculative import DecodingSettings, KVSettings
    from sessions import SessionStore, submit_autosave, submit_resume
    from sessions.transcript import Session

    store = SessionStore(tmp_path / "sessions")
    session = Session(name="kv")
    with Engine() as engine:
        assert isinstance(engine.load(str(demo_kit.llama)).wait(120), ModelLoaded)
        session.add_user("Tell me about modules.")
        done = engine.chat(session.chat_messages(),
                           SamplingParams(temperature=0.0, max_tokens=8)).result_sync()
        session.add_reply(done.text, done.stats.to_dict())
        submit_autosave(engine, store, session, whole=True).result_sync()
        engine.set_decoding(DecodingSettings(kv=KVSettings(bits=8, group_size=64, start=0))
                            ).result_sync()
        report = submit_resume(engine, store, session).result_sync()
    assert not report.reused
    assert "KV-cache settings" in (report.reason or report.notice or "")
    store.close()
