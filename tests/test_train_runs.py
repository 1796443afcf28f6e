"""Training runs end to end (child processes): the best checkpoint and early stopping match
the recorded validation losses; a killed, cancelled or out-of-memory run leaves the adapter
folder as it was and says so; sessions used as data are never written."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from test_train_support import even_data

from jobs.config import TrainConfig
from jobs.events import TrainFailed, TrainFinished, TrainProgress, TrainStarted
from jobs.runner import TrainJob

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_data(demo_kit, tmp_path_factory):
    return even_data(demo_kit, tmp_path_factory.mktemp("data"))




def _config(demo_kit, data, out, **changes) -> TrainConfig:
    values = {"model": str(demo_kit.llama), "data": str(data), "adapter_path": str(out),
              "iters": 8, "batch_size": 2, "steps_per_report": 1, "steps_per_eval": 1,
              "val_batches": 1, "save_every": 1, "learning_rate": 4e-2, "num_layers": 2,
              "max_seq_length": 256, "seed": 0}
    values.update(changes)
    return TrainConfig.from_args(values)


def _run(config: TrainConfig) -> tuple[TrainJob, list]:
    job = TrainJob(config)
    job.start()
    events = list(job.events(timeout=240))
    assert job.done
    return job, events


@pytest.fixture(scope="module")
def early_run(demo_kit, small_data, tmp_path_factory):
    """One run with validation at every iteration, a checkpoint at every iteration and
    patience 1 (a high learning rate makes the validation loss go up and down)."""
    out = tmp_path_factory.mktemp("early") / "adapter"
    job, events = _run(_config(demo_kit, small_data, out, patience=1))
    return out, job, events


def _tensors(path: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(path))


def _equal(a: Path, b: Path) -> bool:
    import mlx.core as mx

    ta, tb = _tensors(a), _tensors(b)
    return sorted(ta) == sorted(tb) and all(mx.array_equal(ta[k], tb[k]).item() for k in ta)


def _expected_stop(losses: list[float], patience: int) -> int | None:
    best, since = None, 0
    for i, loss in enumerate(losses):
        if best is None or loss < best:
            best, since = loss, 0
        else:
            since += 1
            if since >= patience:
                return i
    return None


def test_best_checkpoint_and_early_stop_follow_the_recorded_losses(early_run, demo_kit):
    out, _job, events = early_run
    final = events[-1]
    assert isinstance(final, TrainFinished), final
    assert isinstance(events[0], TrainStarted) or any(isinstance(e, TrainStarted)
                                                      for e in events)
    record = json.loads((out / "training.json").read_text())
    val = record["val_losses"]
    iterations = [v["iteration"] for v in val]
    losses = [v["val_loss"] for v in val]
    assert iterations == list(range(len(val)))  # validated at every iteration, from 0
    best = min(range(len(losses)), key=losses.__getitem__)
    assert record["best"]["iteration"] == iterations[best] == final.best_iteration
    assert record["best"]["val_loss"] == losses[best] == final.best_val_loss
    stop = _expected_stop(losses, patience=1)
    assert stop is not None and record["stopped"] == "early-stopping" and final.stopped_early
    assert record["iterations"] == iterations[stop] == final.iterations
    assert iterations[-1] == iterations[stop]  # nothing validated after the stop
    assert [t["iteration"] for t in record["train_losses"]] == list(
        range(1, iterations[stop] + 1))
    assert best != stop  # the best is not the last: both are kept
    # The best weights are mlx-lm's own checkpoint of that iteration; the last ones are the
    # weights it stopped with (its checkpoint of the stop iteration); none after it.
    assert best >= 1
    assert _equal(out / "best" / "adapters.safetensors",
                  out / f"{iterations[best]:07d}_adapters.safetensors")
    assert _equal(out / "adapters.safetensors",
                  out / f"{iterations[stop]:07d}_adapters.safetensors")
    assert not (out / f"{iterations[stop] + 1:07d}_adapters.safetensors").exists()
    assert set(record["files"]) == {p.relative_to(out).as_posix()
                                    for p in out.rglob("*") if p.is_file()}
    # Both load as adapter folders, as mlx-lm loads them.
    from mlx_lm.utils import load

    for folder in (out, out / "best"):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["adapter_path"] == str(folder)
        load(str(demo_kit.llama), adapter_path=str(folder))


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["kill", "cancel", "memory"])
def test_a_run_that_dies_leaves_the_previous_adapter_intact(early_run, demo_kit, small_data,
                                                             tmp_path, monkeypatch, how):
    out = tmp_path / "adapter"
    shutil.copytree(early_run[0], out)
    before = _snapshot(out)
    if how == "memory":
        monkeypatch.setenv("WORKBENCH_TRAIN_FAULT", "memory@1")
    job = TrainJob(_config(demo_kit, small_data, out, iters=200, steps_per_eval=100))
    job.start()
    events = []
    for event in job.events(timeout=240):
        events.append(event)
        if isinstance(event, TrainProgress) and how == "kill":
            os.kill(job.pid, signal.SIGKILL)
        if isinstance(event, TrainProgress) and how == "cancel":
            job.cancel()
    final = events[-1]
    assert isinstance(final, TrainFailed), final
    assert final.kind == {"kill": "crashed", "cancel": "cancelled", "memory": "memory"}[how]
    assert "\n" not in final.message
    if how == "kill":
        assert "SIGKILL" in final.message
    assert job.done and job.final == final
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging left


def test_sessions_as_data_are_read_never_written(demo_kit, tmp_path, capsys):
    from sessions.store import SessionStore
    from workbench.cli import main

    folder = tmp_path / "sessions"
    with SessionStore(folder) as store:
        for name in ("alpha", "beta"):
            session = store.new(name, system_prompt="Be brief.")
            for i in range(3):
                session.add_user(f"{name} question {i}?")
                reply = session.add_reply(f"{name} answer {i}.")
                reply.good = i != 1
                if i == 2:
                    reply.edited = f"{name} better answer {i}."
            store.save(session)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    out = tmp_path / "adapter"
    code = main(["train", "--model", str(demo_kit.llama), "--sessions", "alpha", "beta",
                 "--sessions-dir", str(folder), "--only-good", "--valid-share", "0.25",
                 "--adapter-path", str(out), "--iters", "2", "--batch-size", "1",
                 "--num-layers", "1", "--steps-per-eval", "2", "--val-batches", "1",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert after == before
    rows = [json.loads(line) for name in ("train", "valid")
            for line in (out / "data" / f"{name}.jsonl").read_text().splitlines()]
    targets = sorted(r["messages"][-1]["content"] for r in rows)
    assert targets == ["alpha answer 0.", "alpha better answer 2.", "beta answer 0.",
                       "beta better answer 2."]
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in rows)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["data"] == str(out / "data")
    record = json.loads((out / "training.json").read_text())
    assert record["workbench"]["sessions"] == ["alpha", "beta"]


def test_a_trained_adapter_swapped_into_a_running_conversation_is_exact(demo_kit, early_run):
    """The adapter a run wrote (its last weights, and its best checkpoint), swapped into a
    conversation already under way, gives exactly what a fresh
    ``mlx_lm.load(model, adapter_path=...)`` gives for the same conversation."""
    from engine import Engine, ModelLoaded, SamplingParams
    from tests.helpers import reference_reply

    out, _job, _events = early_run
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    with Engine() as engine:
        assert isinstance(engine.load(str(demo_kit.llama)).wait(120), ModelLoaded)
        messages = [{"role": "user", "content": "Tell me about modules."}]
        first = engine.chat(messages, greedy).result_sync()  # the base model, cached
        messages += [{"role": "assistant", "content": first.text},
                     {"role": "user", "content": "And packages?"}]
        for adapter in (out, out / "best"):
            engine.use_adapter(str(adapter)).result_sync()
            reply = engine.chat(messages, greedy).result_sync()
            assert reply.text == reference_reply(demo_kit.llama, messages, 12, adapter=adapter)
            assert reply.stats.adapter_identity  # it ran under the adapter
