"""A cheap fingerprint of a model folder, to tell whether a saved prompt cache belongs to it.

A prompt cache made by another model of the same shapes loads without complaint and makes
the model write garbage, so every cache file carries the fingerprint of the model that made
it. Hashing whole weight files would take seconds on big models; instead the fingerprint
covers the small files that define the model and its tokenizer (config, tokenizer, chat
template) in full, and for each weight file its name, size, safetensors header (tensor
names, shapes, offsets) and three 64 KiB samples of the tensor data (start, middle, end).
Two fine-tunes of one base differ in those samples; a copied folder keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from common.safetensors_header import SafetensorsHeaderError, read_safetensors_header

FINGERPRINT_VERSION = "fp1"
SAMPLE = 64 * 1024
_SMALL_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "vocab.json", "merges.txt", "tiktoken.model",
)
_memo: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_memo_lock = threading.Lock()


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("model*.safetensors"))
    return files or sorted(p for p in folder.glob("*.safetensors")
                           if not p.name.startswith("adapters"))


def _stat_key(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    key = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        key.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(key)


def model_fingerprint(folder: str | Path) -> str:
    """``fp1:<32 hex digits>`` for the model in ``folder`` (memoized until a file changes)."""
    folder = Path(folder)
    files = [folder / n for n in _SMALL_FILES if (folder / n).is_file()] + _weight_files(folder)
    memo_key = (str(folder.resolve()), _stat_key(files))
    with _memo_lock:
        if memo_key in _memo:
            return _memo[memo_key]
    value = _hash_files(files)
    with _memo_lock:
        _memo[memo_key] = value
    return value


def _hash_weights(h: hashlib._Hash, path: Path) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    try:
        header_len = read_safetensors_header(path).header_bytes
    except SafetensorsHeaderError:
        header_len = 0  # a damaged file: fingerprint its bytes as they are
    with open(path, "rb") as fh:
        h.update(fh.read(8 + header_len))
        start = 8 + header_len
        data = size - start
        for pos in (start, start + max(0, data // 2 - SAMPLE // 2), max(start, size - SAMPLE)):
            fh.seek(pos)
            h.update(fh.read(SAMPLE))


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        try:
            if p.suffix == ".safetensors":
                _hash_weights(h, p)
            else:
                h.update(p.read_bytes())
        except OSError as exc:
            h.update(f"unreadable:{exc.errno}".encode())
        h.update(b"\0")
    return f"{FINGERPRINT_VERSION}:{h.hexdigest()[:32]}"
