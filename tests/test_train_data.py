"""What `workbench train` refuses before any process starts: bad data (one line per bad
record), an adapter folder holding files it did not write, a run that cannot fit in memory;
and how sessions become examples (good and edited replies), read only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import BadSetting
from jobs.config import TrainConfig
from jobs.data import TrainDataError, check_folder, session_examples, split
from jobs.folder import AdapterFolderTaken, check_target
from jobs.runner import TrainJob
from workbench.cli import main


@pytest.fixture(scope="module")
def tokenizer(demo_kit):
    from mlx_lm.tokenizer_utils import load

    return load(Path(demo_kit.llama))


def _chat(user: str, reply: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": reply}]})


def _bad_folder(folder: Path) -> Path:
    folder.mkdir()
    lines = [_chat("Hi", "Hello."),
             '{"messages": [ {"role": "user"',
             json.dumps({"prompt": "Hi", "response": "Hello."}),
             _chat("Tell me everything", "word " * 200),
             "",
             json.dumps(["not", "an", "object"]),
             _chat("Ok", "Fine.")]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "valid.jsonl").write_bytes(_chat("Hi", "Hello.").encode() + b"\n"
                                         + b'{"text": "caf\xe9"}\n')
    (folder / "test.jsonl").write_text("")
    return folder


EXPECTED = [
    "train.jsonl:2: invalid JSON (",
    "train.jsonl:3: wrong keys: expected 'messages' (chat, like line 1), found 'prompt', "
    "'response'",
    "train.jsonl:4: ",  # ... tokens, longer than max_seq_length 64
    "train.jsonl:5: blank line",
    "train.jsonl:6: a JSON object is expected, not list",
    "valid.jsonl:2: not UTF-8 text",
    "test.jsonl: empty",
]


def test_bad_records_are_one_line_each(tmp_path, tokenizer):
    folder = _bad_folder(tmp_path / "data")
    with pytest.raises(TrainDataError) as info:
        check_folder(folder, tokenizer, max_seq_length=64, batch_size=1, label="data")
    problems = info.value.problems
    assert len(problems) == len(EXPECTED), problems
    for line, start in zip(problems, EXPECTED, strict=True):
        assert line.startswith(f"data/{start}"), line
        assert "\n" not in line
    assert "longer than max_seq_length 64" in problems[2]
    assert "\n" not in str(info.value) and "7 problems" in str(info.value)


def test_the_command_prints_them_and_writes_nothing(tmp_path, demo_kit, capsys):
    folder = _bad_folder(tmp_path / "data")
    out = tmp_path / "adapter"
    code = main(["train", "--model", str(demo_kit.llama), "--data", str(folder),
                 "--adapter-path", str(out), "--max-seq-length", "64", "--batch-size", "1",
                 "--num-layers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert [line.split(": ", 1)[1].split(str(folder) + "/")[1][:12] for line in err[:-1]] == [
        e[:12] for e in EXPECTED]
    assert err[-1] == ("workbench: 7 problems in the training data: fix them and start "
                       "again (nothing was trained)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize(("train", "valid", "expected"), [
    ("", None, "train.jsonl: empty"),
    ('{"text": "a"}\n', None, "train.jsonl: 1 examples, fewer than batch_size 2"),
    ('{"text": "a"}\n{"text": "b"}\n', '{"text": "a"}\n', "valid.jsonl: 1 examples, fewer"),
    ('{"question": "a"}\n', None, "train.jsonl:1: keys of no mlx-lm format"),
])
def test_empty_or_small_files(tmp_path, tokenizer, train, valid, expected):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.jsonl").write_text(train)
    if valid is not None:
        (folder / "valid.jsonl").write_text(valid)
    with pytest.raises(TrainDataError) as info:
        check_folder(folder, tokenizer, max_seq_length=512, batch_size=2, label="d")
    assert info.value.problems[0].startswith(f"d/{expected}"), info.value.problems


def test_a_good_folder_is_summed_up(demo_kit, tokenizer):
    summary = check_folder(demo_kit.train_data, tokenizer, max_seq_length=512, batch_size=4)
    assert (summary.format, summary.train, summary.valid) == ("chat", 160, 24)
    assert 0 < summary.longest <= 512


# -- sessions ---------------------------------------------------------------------------------
def _session():
    from sessions.transcript import Session

    s = Session(name="s", system_prompt="Be kind.")
    s.add_user("one?")
    s.add_reply("first.").good = True
    s.add_user("two?")
    s.add_reply("second.")
    s.add_user("three?")
    s.add_reply("thrid.").edited = "third."
    s.add_user("four?")
    s.add_reply("four", cancelled=True)
    return s


def test_sessions_become_one_example_per_reply():
    every = session_examples(_session())
    assert [e["messages"][-1]["content"] for e in every] == ["first.", "second.", "third."]
    last = every[-1]["messages"]
    assert last[0] == {"role": "system", "content": "Be kind."}
    assert [m["content"] for m in last[1:]] == ["one?", "first.", "two?", "second.",
                                                "three?", "third."]
    good = session_examples(_session(), only_good=True)
    assert [e["messages"][-1]["content"] for e in good] == ["first.", "third."]


def test_good_and_edited_survive_saving_and_old_files_still_load():
    from sessions.transcript import parse_session

    session = _session()
    back = parse_session("s", session.to_toml())
    replies = [m for m in back.messages if m.role == "assistant"]
    assert [(m.good, m.edited) for m in replies] == [(True, None), (False, None),
                                                     (False, "third."), (False, None)]
    assert "good" not in session.to_toml().split("second.")[1].split("[[messages]]")[0]
    old = ('schema = 1\ntitle = "t"\n[[messages]]\nrole = "user"\ncontent = "hi"\n'
           '[[messages]]\nrole = "assistant"\ncontent = "hello"\n')
    loaded = parse_session("old", old)
    assert (loaded.messages[1].good, loaded.messages[1].edited) == (False, None)
    assert loaded.problems == []


def test_split_is_seeded_and_holds_out_a_share():
    examples = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(20)]
    train, valid = split(examples, 0.2, seed=3)
    assert (len(train), len(valid)) == (16, 4)
    assert split(examples, 0.2, seed=3) == (train, valid)
    assert split(examples, 0.2, seed=4) != (train, valid)
    assert split(examples, 0.0, seed=3) == (examples, [])


# -- the adapter folder and memory ------------------------------------------------------------
def test_only_new_empty_or_earlier_run_folders_are_written(tmp_path):
    check_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "adapters.safetensors").write_bytes(b"x")
    with pytest.raises(AdapterFolderTaken, match="did not write"):
        check_target(mine)  # no record: not ours
    (mine / "training.json").write_text(json.dumps(
        {"written_by": "mlx-workbench train", "files": ["adapters.safetensors",
                                                       "training.json"]}))
    check_target(mine)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(AdapterFolderTaken, match=r"notes\.txt"):
        check_target(mine)
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(AdapterFolderTaken, match="symbolic link"):
        check_target(tmp_path / "link")


def _config(demo_kit, tmp_path, **changes) -> TrainConfig:
    values = {"model": str(demo_kit.llama), "data": str(demo_kit.train_data),
              "adapter_path": str(tmp_path / "out"), "num_layers": 2, "iters": 2}
    values.update(changes)
    return TrainConfig.from_args(values)


def test_a_run_that_cannot_fit_is_refused_with_the_numbers(demo_kit, tmp_path, monkeypatch):
    from jobs import estimate

    monkeypatch.setattr(estimate, "available_memory", lambda: 50_000_000)
    with pytest.raises(estimate.TrainTooBig) as info:
        TrainJob(_config(demo_kit, tmp_path)).start()
    message = str(info.value)
    assert "\n" not in message
    assert "needs about" in message and "only 50.0 MB is free" in message
    assert "--batch-size" in message
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_estimate_counts_what_mlx_lm_trains(demo_kit):
    """LoRA parameters of the estimate: exactly what mlx-lm's wrappers hold."""
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from jobs.estimate import model_config, trainable_parameters

    lp = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    model, _ = load(str(demo_kit.qwen3))
    model.freeze()
    linear_to_lora_layers(model, 2, lp, use_dora=True)
    real = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    assert trainable_parameters(model_config(demo_kit.qwen3), "dora", 2, lp) == real


@pytest.mark.parametrize(("changes", "expected"), [
    ({"num_layers": 16}, "num_layers 16 but llama has 4 layers"),
    ({"patience": 2, "data": ""}, "no training data"),
])
def test_settings_refused_before_start(demo_kit, tmp_path, changes, expected):
    with pytest.raises(BadSetting, match=expected):
        TrainJob(_config(demo_kit, tmp_path, **changes)).start()


def test_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--fine-tune-type", "--num-layers", "--iters", "--batch-size",
                 "--learning-rate", "--mask-prompt", "--seed", "--steps-per-eval",
                 "--steps-per-report", "--val-batches", "--max-seq-length", "--save-every",
                 "--grad-checkpoint", "--optimizer", "--config", "--patience", "--valid-share",
                 "--sessions", "--adapter-path", "--jsonl", "--demo", "--preset"):
        assert flag in text, flag
    with pytest.raises(SystemExit) as info:
        main(["train", "--iters", "many"])
    assert info.value.code == 2
    assert main(["train", "--data", "x"]) == 2  # no model: a bad setting
    assert "no model given" in capsys.readouterr().err


def test_a_swap_cut_short_is_undone(tmp_path):
    """Killed between the swap's two renames: the previous adapter is put back."""
    from jobs.folder import Staging, recover

    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapters.safetensors").write_bytes(b"previous")
    staging = Staging(out)
    staging.create()
    (staging.path / "adapters.safetensors").write_bytes(b"new")
    out.rename(staging.old)  # the first rename happened, the second did not
    staging.abandon()
    assert (out / "adapters.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    # The same, found later by a new run (the process that was swapping is gone).
    dead = tmp_path / ".adapter.old-999999999-abcd1234"
    out.rename(dead)
    (tmp_path / ".adapter.training-999999999-abcd1234").mkdir()
    assert len(recover(out)) == 2
    assert (out / "adapters.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_validation_from_sessions_takes_at_least_one_batch():
    examples = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]
    assert [len(p) for p in split(examples, 0.1, seed=0, at_least=4)] == [6, 4]
    assert [len(p) for p in split(examples[:6], 0.1, seed=0, at_least=4)] == [5, 1]
