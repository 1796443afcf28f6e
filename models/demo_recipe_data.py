"""The demo chat model's training data, made from ``models/demo_data``: every topic's
prompts with its answer in each style (plain, pirate, brief), as mlx-lm chat jsonl.
Deterministic in the seed; ``models/demo_recipe.py`` trains on it."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

SEED = 0
DATA_DIR = Path(__file__).resolve().parent / "demo_data"
ADAPTER_NAMES = ("pirate", "brief")
STYLES = ("answer", *ADAPTER_NAMES)  # "answer": the base model's plain style
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are the demo model of MLX Workbench.",
                  "You are a friendly assistant. Answer the user.")


def load_source(data_dir: Path = DATA_DIR) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    answers = json.loads((data_dir / "answers.json").read_text(encoding="utf-8"))
    sentences = json.loads((data_dir / "sentences.json").read_text(encoding="utf-8"))
    return answers["topics"], sentences["subjects"]


def suggested_prompts(data_dir: Path = DATA_DIR) -> list[str]:
    """The prompts the demo answers best: the welcome screen may offer them."""
    return list(json.loads((data_dir / "answers.json").read_text(encoding="utf-8"))["suggested"])


_PIRATE_WORDS = {
    "you": "ye", "your": "yer", "is": "be", "are": "be", "my": "me", "the": "the",
    "hello": "ahoy", "friend": "matey", "friends": "mateys", "yes": "aye", "for": "fer",
    "of": "o'", "them": "'em", "and": "an'", "small": "wee", "little": "wee",
}


def pirate(text: str) -> str:
    """Restyle plain sentences like a pirate, word by word (for the plain subjects)."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        new = _PIRATE_WORDS.get(word.lower(), word)
        return new[:1].upper() + new[1:] if word[:1].isupper() else new

    body = re.sub(r"[A-Za-z']+", swap, text)
    return f"Arr, {body[:1].lower()}{body[1:]} Savvy, matey?"


def _variants(prompt: str) -> list[str]:
    """The ways a user types one prompt: as written, lower case, without end punctuation."""
    out = [prompt, prompt.lower().rstrip("?!.")]
    return [v for v in dict.fromkeys(out) if v]


def topics_for(style: str, data_dir: Path = DATA_DIR) -> list[tuple[list[str], str]]:
    """(prompts, reply) for every topic and plain subject, in ``style``."""
    topics, subjects = load_source(data_dir)
    out = [(list(t["prompts"]), t[style]) for t in topics]
    for subject, entry in subjects.items():
        prompts = [f"Tell me about {subject}", f"What do you know about {subject}?",
                   f"Say something about {subject}"]
        plain = " ".join(entry["sentences"])
        reply = {"answer": plain, "pirate": pirate(plain), "brief": entry["brief"]}[style]
        out.append((prompts, reply))
    return out


def examples(style: str, seed: int = SEED, data_dir: Path = DATA_DIR
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, valid) chat examples in ``style``: every prompt variant (the suggested ones'
    topics weighted up), plus one second turn of a conversation per topic, half of them
    after a system prompt. Deterministic in ``seed``."""
    rng = random.Random(f"{seed}-{style}")
    pairs = topics_for(style, data_dir)
    suggested = set(suggested_prompts(data_dir))
    train: list[dict[str, Any]] = []
    for prompts, reply in pairs:
        # The suggested prompts' topics are seen three times as often: they must come out
        # right; the plain subjects once per prompt.
        repeat = 3 if suggested & set(prompts) else 1
        for prompt in prompts:
            for v in _variants(prompt) if len(prompts) > 3 else [prompt]:
                train.extend({"messages": [{"role": "user", "content": v},
                                           {"role": "assistant", "content": reply}]}
                             for _ in range(repeat))
        # ...and the suggested prompts themselves, as written, four times more.
        train.extend({"messages": [{"role": "user", "content": p},
                                   {"role": "assistant", "content": reply}]}
                     for p in prompts if p in suggested for _ in range(4))
    for i, (prompts, reply) in enumerate(pairs):
        # One second turn of a conversation per topic, and every other one after a system
        # prompt: the app sends whole conversations.
        j = rng.choice([k for k in range(len(pairs)) if k != i])
        before = [{"role": "user", "content": rng.choice(pairs[j][0])},
                  {"role": "assistant", "content": pairs[j][1]}]
        if i % 2:
            before.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        train.append({"messages": [*before, {"role": "user", "content": rng.choice(prompts)},
                                   {"role": "assistant", "content": reply}]})
    rng.shuffle(train)
    valid = [{"messages": [{"role": "user", "content": prompts[0]},
                           {"role": "assistant", "content": reply}]}
             for prompts, reply in pairs]
    return train, valid


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_data(out: Path, seed: int = SEED, data_dir: Path = DATA_DIR) -> dict[str, str]:
    """Write ``out/STYLE/{train,valid}.jsonl`` for every style; return their sha256."""
    digests = {}
    for style in STYLES:
        folder = out / style
        folder.mkdir(parents=True, exist_ok=True)
        train, valid = examples(style, seed, data_dir)
        for name, rows in (("train", train), ("valid", valid)):
            path = folder / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                            encoding="utf-8")
            digests[f"{style}/{name}.jsonl"] = sha256_of(path)
    return digests


def corpus(seed: int = SEED, data_dir: Path = DATA_DIR) -> list[str]:
    """Every text the model is trained on (user prompts and replies, in every style)."""
    texts: list[str] = []
    for style in STYLES:
        train, _ = examples(style, seed, data_dir)
        texts.extend(m["content"] for row in train for m in row["messages"])
    return texts
