"""Downloading a model the way a user does, against a local stand-in for the Hub.

The FakeHub (tests/hub_server.py) serves a demo model over HTTP on 127.0.0.1 with the Hub's
API, headers and error codes; huggingface_hub talks to it as it would to huggingface.co.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hub_server import DEMO_REPO, GATED_REPO, closed_port_url, demo_hub, go_online

from common.errors import DownloadError, ModelNotFound, OfflineError, WorkbenchError
from engine import ModelLoaded, SamplingParams, TurnDone
from models.catalog import partial_downloads, scan_models
from models.hub import (
    ALLOW_PATTERNS,
    DownloadCancelled,
    DownloadProgress,
    fetch_model,
    hub_status,
)

REPO = DEMO_REPO
WEIGHTS = "model.safetensors"


@pytest.fixture
def hub(demo_kit, monkeypatch):
    go_online(monkeypatch)
    with demo_hub(demo_kit.llama) as hub:
        yield hub


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf-cache"


def incomplete_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("models--*/blobs/*.incomplete"))


def test_download_lands_in_the_cache_and_the_model_chats(hub, cache, demo_kit, engine):
    events: list[DownloadProgress] = []
    path = fetch_model(REPO, progress=events.append, cache_dir=cache, endpoint=hub.url)

    assert path == cache / "models--demo--tiny-llama" / "snapshots" / hub.repos[REPO].commit
    assert (path / WEIGHTS).read_bytes() == (demo_kit.llama / WEIGHTS).read_bytes()
    assert not (path / "README.md").exists()  # only what an MLX model needs
    # Progress: bytes only go up, end at the total, and say so in words.
    done = [e.done for e in events if e.stage == "downloading"]
    assert done == sorted(done) and events[-1].stage == "done"
    assert events[-1].done == events[-1].total == sum(
        f.stat().st_size for f in path.iterdir())
    assert "downloaded" in events[-1].line()

    listed = scan_models(cache_dir=cache, available=1 << 40)
    assert [e.name for e in listed] == [REPO]
    final = engine.load(str(path)).wait(120)
    assert isinstance(final, ModelLoaded), final
    assert final.info.name == REPO  # not the snapshot's commit hash
    reply = engine.chat([{"role": "user", "content": "hi"}],
                        SamplingParams(max_tokens=8, temperature=0.0)).wait(120)
    assert isinstance(reply, TurnDone) and reply.stats.generated_tokens > 0


def test_layout_is_what_huggingface_hub_itself_writes(hub, cache, tmp_path):
    from huggingface_hub import scan_cache_dir, snapshot_download

    ours = fetch_model(REPO, cache_dir=cache, endpoint=hub.url)
    theirs = Path(snapshot_download(REPO, cache_dir=tmp_path / "theirs", endpoint=hub.url,
                                    allow_patterns=ALLOW_PATTERNS))

    def tree(snapshot: Path) -> dict[str, str]:
        return {p.name: p.readlink().as_posix() for p in snapshot.iterdir()}

    assert tree(ours) == tree(theirs)
    assert ours.name == theirs.name
    # huggingface_hub reads our download back, offline.
    assert Path(snapshot_download(REPO, cache_dir=cache, local_files_only=True)) == ours
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == REPO and repo.size_on_disk > 0


def test_cancelled_download_keeps_its_bytes_and_resumes_with_a_range_request(
        hub, cache, demo_kit):
    total_weights = (demo_kit.llama / WEIGHTS).stat().st_size
    hold = hub.hold(WEIGHTS, after=3 << 20)
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def first_attempt() -> None:
        try:
            fetch_model(REPO, cancel=cancel, cache_dir=cache, endpoint=hub.url)
        except WorkbenchError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=first_attempt)
    worker.start()
    assert hold.reached.wait(60), "the download never reached the weights"
    cancel.set()
    hold.release.set()
    worker.join(60)

    error = outcome.get("error")
    assert isinstance(error, DownloadCancelled), error
    assert "kept" in str(error) and "\n" not in str(error)
    (part,) = incomplete_files(cache)
    kept = part.stat().st_size
    assert 1 << 20 <= kept < total_weights  # at least the MiB that was written when it stopped
    # A cancelled download is not a model: nothing lists it, but it is known as unfinished.
    assert not (cache / "models--demo--tiny-llama" / "snapshots").exists()
    assert scan_models(cache_dir=cache, available=1 << 40) == []
    assert [(p.repo_id, p.bytes_on_disk >= kept) for p in partial_downloads(cache)] == [
        (REPO, True)]

    events: list[DownloadProgress] = []
    path = fetch_model(REPO, progress=events.append, cache_dir=cache, endpoint=hub.url)

    resumed = hub.served(WEIGHTS)[-1]
    assert resumed.range == f"bytes={kept}-" and resumed.status == 206
    assert resumed.sent == total_weights - kept  # the kept bytes were not fetched again
    assert (path / WEIGHTS).read_bytes() == (demo_kit.llama / WEIGHTS).read_bytes()
    assert incomplete_files(cache) == []
    assert events[1].resumed >= kept and events[1].done >= kept  # progress starts where it was


def test_a_damaged_partial_file_is_caught_not_loaded(hub, cache):
    fetch_model(REPO, cache_dir=cache, endpoint=hub.url)
    blob = next(p for p in (cache / "models--demo--tiny-llama" / "blobs").iterdir()
                if p.stat().st_size > 1 << 20)
    etag = blob.name
    # Pretend an interrupted download of the weights left bytes that are not the file's.
    import shutil

    shutil.rmtree(cache / "models--demo--tiny-llama" / "snapshots")
    blob.unlink()
    (blob.parent / f"{etag}.incomplete").write_bytes(b"\0" * (1 << 20))

    with pytest.raises(DownloadError, match="damaged") as err:
        fetch_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert "\n" not in str(err.value)
    assert incomplete_files(cache) == []  # the bad bytes are gone...
    path = fetch_model(REPO, cache_dir=cache, endpoint=hub.url)  # ...and a retry succeeds
    assert (path / WEIGHTS).stat().st_size == len(hub.repos[REPO].files[WEIGHTS].data)


@pytest.mark.parametrize(("repo", "error", "words"), [
    (GATED_REPO, DownloadError, "gated"),
    ("demo/no-such-model", DownloadError, "not found"),
    ("not a repo id", ModelNotFound, "owner/name"),
    ("demo/a/b", ModelNotFound, "owner/name"),
])
def test_hub_refusals_are_one_clear_line(hub, cache, repo, error, words):
    with pytest.raises(error) as err:
        fetch_model(repo, cache_dir=cache, endpoint=hub.url)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (cache / "models--demo--gated-llama" / "snapshots").exists()


def test_no_network_is_one_line_and_says_so(monkeypatch, cache):
    go_online(monkeypatch)
    with pytest.raises(OfflineError, match="cannot reach") as err:
        fetch_model(REPO, cache_dir=cache, endpoint=closed_port_url())
    assert "\n" not in str(err.value)
    assert (hub_status(closed_port_url(), timeout=5) or "").startswith("offline: cannot reach")


def test_offline_mode_sends_nothing_but_uses_a_cached_copy(hub, cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        fetch_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert hub.log == []
    assert (hub_status(hub.url) or "").startswith("offline: HF_HUB_OFFLINE")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_status(hub.url) is None
    path = fetch_model(REPO, cache_dir=cache, endpoint=hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = len(hub.log)
    events: list[DownloadProgress] = []
    assert fetch_model(REPO, progress=events.append, cache_dir=cache, endpoint=hub.url) == path
    assert len(hub.log) == requests and events[-1].stage == "cached"


def test_hub_unreachable_but_cached_gives_the_cached_copy(hub, cache):
    path = fetch_model(REPO, cache_dir=cache, endpoint=hub.url)
    assert fetch_model(REPO, cache_dir=cache, endpoint=closed_port_url()) == path
