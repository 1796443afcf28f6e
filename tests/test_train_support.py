"""Shared by the training tests (no tests here): a small data folder whose examples all pad
to one batch width, so mlx-lm's compiled training step is traced once per run."""

from __future__ import annotations

import json
from pathlib import Path


def even_data(demo_kit, folder: Path, train: int = 8, valid: int = 2) -> Path:
    """``train``/``valid`` demo chat examples of 65 to 96 tokens (one padded width)."""
    from mlx_lm.tokenizer_utils import load

    tokenizer = load(Path(demo_kit.llama))
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("valid", valid)):
        rows = []
        for line in (demo_kit.train_data / f"{name}.jsonl").read_text().splitlines():
            tokens = len(tokenizer.apply_chat_template(json.loads(line)["messages"],
                                                       return_dict=False))
            if 64 < tokens <= 96:
                rows.append(line)
            if len(rows) == n:
                break
        (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    return folder

