"""Find the models on this machine and say what each one is, without loading any.

The models screen and ``workbench models`` list what the Hugging Face cache and the user's
model folders hold, with the facts a user picks by: size on disk, bits per weight,
parameters, context length, and whether it fits in memory now. All of it comes from
``config.json`` and the safetensors headers (a few KB per file, read by
``models.model_facts``), so a scan of dozens of models takes milliseconds and never touches
MLX: it may run on any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.formats import fmt_count
from common.repo_id import _repo_id_from_folder, repo_id_of
from models.fit import fit_report, system_available_memory

from .hub import cached_snapshot, default_cache_dir
from .model_facts import describe_model
from .resolve import location_key

SOURCE_CACHE = "hf-cache"
SOURCE_FOLDER = "folder"
SOURCE_RECENT = "recent"


@dataclass(frozen=True)
class ModelEntry:
    """One model a user can pick. ``spec`` is what to pass to ``Engine.load``."""

    name: str  # repo id for cached models, the folder's name otherwise
    spec: str  # repo id (cached, main revision) or folder path
    path: Path  # the folder mlx-lm loads
    source: str  # hf-cache | folder | recent
    repo_id: str | None = None
    revision: str | None = None  # the cached commit
    architecture: str = "?"
    supported: bool = False
    problem: str = ""  # why it cannot be loaded ("" when it can)
    size_on_disk: int = 0
    weight_bytes: int = 0
    num_parameters: int = 0
    bits_per_weight: float = 0.0
    quant_bits: int | None = None  # None: not quantized
    group_size: int | None = None
    context_length: int = 0
    is_demo: bool = False
    need_bytes: int = 0  # weights + KV cache for the scan's context + overhead
    available_bytes: int = 0
    fit: str = "?"  # fits | tight | too-big
    recent_rank: int | None = None  # 0 = the most recently used

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @property
    def params_label(self) -> str:
        """596.0 M, 1.2 B: the same figure the sidebar shows once the model is loaded."""
        return fmt_count(self.num_parameters) if self.num_parameters else "?"


@dataclass(frozen=True)
class PartialDownload:
    """A download that was stopped: run it again to finish it."""

    repo_id: str
    bytes_on_disk: int


# -- where models are ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    path: Path
    source: str
    repo_id: str | None = None
    revision: str | None = None
    spec: str | None = None
    size_on_disk: int | None = None


def _cache_models(cache_dir: str | Path | None) -> list[_Found]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    default = cache_dir is None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, OSError, ValueError):
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revisions = sorted(repo.revisions, key=lambda r: ("main" in r.refs, bool(r.refs),
                                                          r.last_modified), reverse=True)
        rev = revisions[0]
        if not (rev.snapshot_path / "config.json").exists():
            continue  # a tokenizer-only or non-model repo
        on_main = "main" in rev.refs
        # Incomplete by huggingface_hub's own tree listing (an interrupted snapshot_download).
        complete = cached_snapshot(repo.repo_id, rev.commit_hash, cache) is not None
        spec = repo.repo_id if on_main and default else str(rev.snapshot_path)
        found.append(_Found(rev.snapshot_path, SOURCE_CACHE, repo.repo_id, rev.commit_hash,
                            spec if complete else None, rev.size_on_disk))
    return found


def model_folders_in(root: Path, depth: int = 2) -> list[Path]:
    """Model folders (holding config.json) at ``root`` or up to ``depth`` levels below it."""
    root = Path(root).expanduser()
    if (root / "config.json").is_file():
        return [root]
    if depth <= 0 or not root.is_dir():
        return []
    found: list[Path] = []
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.startswith(".") or not child.is_dir():
            continue
        found.extend(model_folders_in(child, depth - 1))
    return found


def partial_downloads(cache_dir: str | Path | None = None) -> list[PartialDownload]:
    """Downloads that were stopped before the end (their bytes wait in the cache)."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sizes: dict[str, int] = {}
    for part in base.glob("models--*/blobs/*.incomplete"):
        repo_id = _repo_id_from_folder(part.parent.parent.name)
        if repo_id is None:
            continue
        try:
            sizes[repo_id] = sizes.get(repo_id, 0) + part.stat().st_size
        except OSError:
            pass
    return [PartialDownload(r, n) for r, n in sorted(sizes.items())]


def scan_models(folders: Iterable[str | Path] = (), *, cache_dir: str | Path | None = None,
                include_cache: bool = True, recent: Sequence[str] = (),
                context_tokens: int = 4096, available: int | None = None,
                include_unsupported: bool = False) -> list[ModelEntry]:
    """Every model in the Hugging Face cache, in ``folders`` and in ``recent``.

    ``recent`` holds specs (repo ids or folder paths), most recent first: those models come
    first in the list, then the rest by name. Models mlx-lm cannot load are left out unless
    ``include_unsupported``; their ``problem`` says why. ``fit`` compares each model's need
    with ``context_tokens`` of context against ``available`` (default: the system's free
    memory now, read without MLX; pass the engine's ``MemoryReading.load_available`` for the
    device's figure).
    """
    found: list[_Found] = _cache_models(cache_dir) if include_cache else []
    for folder in folders:
        found.extend(_Found(p, SOURCE_FOLDER) for p in model_folders_in(Path(folder)))
    for spec in recent:
        p = Path(spec).expanduser()
        if p.is_absolute() and (p / "config.json").is_file():
            found.append(_Found(p, SOURCE_RECENT))
    have = system_available_memory() if available is None else available
    rank: dict[str, int] = {}
    for i, spec in enumerate(recent):
        key = spec if not Path(spec).expanduser().is_absolute() else location_key(spec)
        rank.setdefault(key, i)
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for item in found:
        key = location_key(item.path)
        if key in seen:
            continue
        seen.add(key)
        facts = describe_model(item.path)
        problem = facts.problem
        if item.source == SOURCE_CACHE and item.spec is None and not problem:
            problem = (f"the download of {item.repo_id} is incomplete: run `workbench download "
                       f"{item.repo_id}` to finish it")
        if problem and not include_unsupported:
            continue
        repo_id = item.repo_id or repo_id_of(item.path)
        report = fit_report(item.path, have, context_tokens)
        ranks = [r for r in (rank.get(key), rank.get(repo_id or "")) if r is not None]
        entries.append(ModelEntry(
            name=repo_id if item.source == SOURCE_CACHE and repo_id else item.path.name,
            spec=item.spec or str(item.path),
            path=item.path,
            source=item.source,
            repo_id=repo_id,
            revision=item.revision,
            architecture=facts.architecture,
            supported=not problem,
            problem=problem,
            size_on_disk=item.size_on_disk if item.size_on_disk is not None
            else facts.size_on_disk,
            weight_bytes=facts.weight_bytes,
            num_parameters=facts.num_parameters,
            bits_per_weight=facts.bits_per_weight,
            quant_bits=facts.quant_bits,
            group_size=facts.group_size,
            context_length=facts.context_length,
            is_demo=facts.is_demo,
            need_bytes=report.need,
            available_bytes=report.available,
            fit=report.verdict,
            recent_rank=min(ranks) if ranks else None,
        ))
    entries.sort(key=lambda e: (e.recent_rank is None, e.recent_rank or 0, e.name.lower()))
    return entries


def filter_models(entries: Iterable[ModelEntry], text: str) -> list[ModelEntry]:
    """Entries whose name, repo id, architecture, path or bits contain every word of ``text``."""
    words = text.lower().split()
    out = []
    for e in entries:
        bits = f"{e.quant_bits}bit {e.quant_bits}-bit" if e.quant_bits else "full"
        hay = " ".join((e.name, e.repo_id or "", e.architecture, str(e.path), e.source, bits,
                        e.params_label, e.params_label.replace(" ", ""))).lower()
        if all(w in hay for w in words):
            out.append(e)
    return out
