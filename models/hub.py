"""Download a model repo into the standard Hugging Face cache, with progress, cancel and resume.

huggingface_hub's ``snapshot_download`` writes each file to a private temporary name and
deletes it when the download stops, so a cancelled 300 MB file starts again from zero, and
its progress arrives in 10 MB steps. This module keeps huggingface_hub for everything it does
well (the Hub API, errors, headers, tokens, the cache layout) and does the byte transfer
itself (``models.hub_transfer``): partial files stay in ``blobs/<etag>.incomplete``, the
next attempt continues them with an HTTP ``Range`` request, and progress arrives per 1 MiB
with speed and time left.

The snapshot folder (``snapshots/<commit>/``) and the ref are written only after every file is
complete, so a cancelled download never looks like a model to a cache scan or to
``mlx_lm.load``. The result is the same layout ``snapshot_download`` writes: huggingface_hub's
own ``scan_cache_dir`` and ``snapshot_download(local_files_only=True)`` read it.

Nothing here imports MLX: a download may run on any thread (a UI worker, the CLI's main
thread), not only on the engine thread.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from common.errors import DownloadError, ModelNotFound, OfflineError, WorkbenchError
from common.repo_id import looks_like_repo_id, offline

# DownloadCancelled, DownloadProgress and ProgressCallback are part of fetch_model's API:
# callers import them from here.
from .hub_transfer import (
    DownloadCancelled,
    DownloadProgress,
    ProgressCallback,
    RemoteFile,
    download_files,
    network_errors,
)

# What mlx-lm itself downloads for a model (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS), minus
# *.py: the workbench never runs a model's own code.
ALLOW_PATTERNS = [
    "*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model",
    "*.txt", "*.jsonl", "*.jinja",
]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _translate(exc: Exception, repo_id: str, revision: str, endpoint: str) -> WorkbenchError:
    """One line for each way the Hub can say no."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    host = urlparse(endpoint).netloc or endpoint
    refusals: list[tuple[Any, type[WorkbenchError], str]] = [
        (HFValidationError, ModelNotFound, "{repo!r} is not a valid Hugging Face repo id: it "
         "looks like owner/name, for example mlx-community/Qwen3-0.6B-4bit"),
        (GatedRepoError, DownloadError, "{repo} is gated: accept its licence on huggingface.co "
         "and log in with `hf auth login`, then try again"),
        (RepositoryNotFoundError, DownloadError, "{repo} was not found on the Hugging Face Hub: "
         "check the spelling (owner/name), or log in with `hf auth login` if it is private"),
        (RevisionNotFoundError, DownloadError, "{repo} has no revision {revision!r}: leave out "
         "the revision to get the latest (main)"),
        (RemoteEntryNotFoundError, DownloadError, "{repo}: a file listed by the Hub is missing "
         "from it; try again later"),
        (OfflineModeIsEnabled, OfflineError, "{repo} cannot be downloaded: HF_HUB_OFFLINE is "
         "set; unset it to download, or give a local model folder"),
        (network_errors(), OfflineError, "cannot reach the Hugging Face Hub ({host}): no network? "
         "check the connection and try again, or give a local model folder"),
    ]
    for caught, error, text in refusals:  # most specific first: Gated is a RepositoryNotFound
        if isinstance(exc, caught):
            return error(text.format(repo=repo_id, revision=revision, host=host))
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return DownloadError(f"the Hugging Face Hub refused {repo_id} (HTTP {status}); try "
                             "again later")
    if isinstance(exc, OSError):
        return DownloadError(f"cannot write the download of {repo_id} to disk "
                             f"({exc.strerror or exc}): free some space or check the cache "
                             "folder's permissions")
    return DownloadError(f"download of {repo_id} failed: {type(exc).__name__}: {exc}")


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def default_endpoint() -> str:
    """``HF_ENDPOINT`` as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_url(endpoint: str, repo_id: str, revision: str, filename: str) -> str:
    """The Hub's download URL for one file of a model repo at ``revision``."""
    return f"{endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def repo_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/models--owner--name``, the folder the Hugging Face cache keeps a repo in."""
    from huggingface_hub.file_download import repo_folder_name

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_snapshot(repo_id: str, revision: str = "main",
                    cache_dir: str | Path | None = None) -> Path | None:
    """The complete cached snapshot of ``repo_id``, found without any network, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    if not looks_like_repo_id(repo_id):
        return None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                      cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def partial_bytes(repo_id: str, cache_dir: str | Path | None = None) -> int:
    """Bytes of unfinished files a cancelled download left for ``repo_id`` (0 if none)."""
    blobs = repo_folder(repo_id, cache_dir) / "blobs"
    total = 0
    for f in blobs.glob("*.incomplete"):
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


def hub_status(endpoint: str | None = None, timeout: float = 2.0) -> str | None:
    """None when the Hub answers a TCP connect, else one line saying why downloads won't work.

    Cheap enough for a welcome screen: no HTTP, one connection attempt, at most ``timeout``.
    """
    if offline():
        return "offline: HF_HUB_OFFLINE is set, so nothing can be downloaded"
    url = urlparse(endpoint or default_endpoint())
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"offline: cannot reach {url.netloc} ({exc.strerror or type(exc).__name__})"


def fetch_model(repo_id: str, *, revision: str = "main",
                progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None,
                cache_dir: str | Path | None = None, endpoint: str | None = None,
                token: str | bool | None = None) -> Path:
    """Download ``repo_id`` into the Hugging Face cache and return its snapshot folder.

    Files already complete in the cache are not fetched again; unfinished ones continue
    where they stopped. ``cancel`` (checked every MiB) raises ``DownloadCancelled`` and keeps
    what arrived. Any other failure raises a ``WorkbenchError`` with one line. When the Hub
    cannot be reached but a complete copy is cached, that copy is returned.
    """
    repo_id = repo_id.strip()
    if not looks_like_repo_id(repo_id):
        raise ModelNotFound(f"{repo_id!r} is not a Hugging Face repo id: it looks like "
                            "owner/name, for example mlx-community/Qwen3-0.6B-4bit")
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if offline():
        cached = cached_snapshot(repo_id, revision, cache)
        if cached is not None:
            _say(progress, DownloadProgress(repo_id, "cached"))
            return cached
        raise OfflineError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                           "set: unset it to download, or give a local model folder")
    _say(progress, DownloadProgress(repo_id, "listing"))
    try:
        commit, files = _list_files(repo_id, revision, endpoint, token, cancel)
    except WorkbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one line
        error = _translate(exc, repo_id, revision, endpoint)
        cached = cached_snapshot(repo_id, revision, cache)
        if isinstance(error, OfflineError) and cached is not None:
            _say(progress, DownloadProgress(repo_id, "cached"))
            return cached
        raise error from None
    try:
        return download_files(repo_id, revision, commit, files, cache,
                              repo_folder(repo_id, cache), progress, cancel)
    except (WorkbenchError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, repo_id, revision, endpoint) from None


def _say(progress: ProgressCallback | None, event: DownloadProgress) -> None:
    if progress is not None:
        progress(event)


def _list_files(repo_id: str, revision: str, endpoint: str, token: str | bool | None,
                cancel: threading.Event | None) -> tuple[str, list[RemoteFile]]:
    """The commit ``revision`` points at and, for each wanted file, its URL, etag and size."""
    from huggingface_hub import HfApi, get_hf_file_metadata
    from huggingface_hub.utils import build_hf_headers, filter_repo_objects

    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
    commit = info.sha or ""
    if not _COMMIT.match(commit):
        raise DownloadError(f"{endpoint} did not name a commit for {repo_id}: is HF_ENDPOINT a "
                            "Hugging Face Hub?")
    names = [s.rfilename for s in info.siblings or []]
    wanted = list(filter_repo_objects(names, allow_patterns=ALLOW_PATTERNS))
    if not wanted:
        raise DownloadError(f"{repo_id} has no files an MLX model needs (config.json, "
                            "*.safetensors): is it an MLX model repo?")
    files = []
    for name in sorted(wanted):
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled(f"download of {repo_id} cancelled before it began")
        url = resolve_url(endpoint, repo_id, commit, name)
        headers = build_hf_headers(token=token)
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if not meta.etag:
            raise DownloadError(f"{endpoint} sent no ETag for {name}: is HF_ENDPOINT a Hugging "
                                "Face Hub?")
        location = meta.location or url
        if urlparse(location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)  # a signed CDN link: never send the token there
        files.append(RemoteFile(name, location, meta.etag, meta.size, headers))
    return commit, files
