"""The demo models' tokenizer: a byte-level BPE trained with ``tokenizers`` on given text, in
well under a second, deterministically, with a ChatML chat template. Shared by the random
demo kit (models/demo.py) and the trained chat demo's recipe (models/demo_recipe.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
EOS_TOKEN_ID = SPECIAL_TOKENS.index(EOS_TOKEN)

# The trained demo chat model's template (models/demo_recipe.py writes it into the model it
# ships): ChatML, but only the latest user message and what follows it. That model learnt
# single questions (0.4 M weights cannot follow a conversation): with the whole history in
# front of it, a few turns in it wrote gibberish and its pad token. So it reads each message
# afresh, as it was trained; it remembers no earlier turn and no system prompt.
LATEST_MESSAGE_TEMPLATE = (
    "{% set ns = namespace(start=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.start = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% for message in messages[ns.start:] %}"
    "{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A reasoning model's template, in the style of Qwen3's: replies in the history lose their
# <think> block when the conversation is rendered again (so the next prompt parts from the
# cached one at the seam), and ``enable_thinking=False`` closes an empty block in the prompt.
THINKING_TOKENS = ["<think>", "</think>"]
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024,
                    extra_tokens: Iterable[str] = ()) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``; ``extra_tokens`` are added after the
    trained vocabulary as whole tokens that decode as written (e.g. ``<think>``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    extra = [AddedToken(t, special=False, normalized=False) for t in extra_tokens]
    if extra:
        tok.add_tokens(extra)
    return tok


def write_tokenizer(path: Path, texts: Iterable[str], vocab_size: int = 1024,
                    max_length: int = 4096, *, chat_template: str = CHAT_TEMPLATE,
                    extra_tokens: Iterable[str] = ()) -> int:
    """Write ``tokenizer.json`` and the configs ``mlx_lm.load`` needs into the model folder
    ``path``; returns the vocabulary size. ``PreTrainedTokenizerFast`` is named, or
    transformers would pick a model-specific class and the token ids would change."""
    tok = build_tokenizer(texts, vocab_size, extra_tokens)
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
        "eos_token": EOS_TOKEN,
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"eos_token": EOS_TOKEN, "pad_token": "<|endoftext|>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return int(tok.get_vocab_size())
