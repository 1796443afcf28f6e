"""`workbench eval` and jobs/evaluate.py: the replies are mlx-lm's, the validation
loss is mlx-lm's `evaluate`, the adapter in use survives the evaluation, exports never
replace a file, and a bad prompt file is reported one line per bad record."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine import SamplingParams
from jobs.evaluate import (
    EvalCandidate,
    EvalProgress,
    EvalReply,
    EvalReport,
    ExportExists,
    PromptFileError,
    evaluate_on_engine,
    load_prompts,
    run_eval,
    write_new_file,
)
from tests.helpers import reference_reply
from workbench.cli import main

MAX_TOKENS = 10
QUESTIONS = ["What does a decorator do?", "Name a prime number.", "Why is the sky blue?",
             "What is a list?", "Say hello.", "Count to three.", "What is 2 plus 2?",
             "Who wrote Python?"]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder in mlx-lm's chat format (valid.jsonl only)."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "valid.jsonl", [
        {"messages": [{"role": "user", "content": q},
                      {"role": "assistant", "content": f"An answer to {q.lower()}"}]}
        for q in QUESTIONS[:4]])  # one batch of 4 (a CPU forward pass costs ~3 ms a token)
    return folder


PROMPTS = [
    [{"role": "user", "content": "What does a decorator do?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a prime number."},
     {"role": "assistant", "content": "Seven."},
     {"role": "user", "content": "Another one?"}],
]


def state_of(engine) -> tuple[str | None, float | None]:
    state = engine.adapter_state().result_sync(30)
    return state.path, state.scale


# -- prompt files ---------------------------------------------------------------------------

def test_load_prompts_reads_every_format(tmp_path: Path, data_dir: Path) -> None:
    file = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "one"},
        {"prompt": "two", "system": "be brief"},
        {"prompt": "three", "completion": "ignored"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ])
    assert load_prompts(file) == [
        [{"role": "user", "content": "one"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two"}],
        [{"role": "user", "content": "three"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}],
    ]
    from_folder = load_prompts(data_dir)  # a data folder: its valid.jsonl
    assert [p[-1]["content"] for p in from_folder] == QUESTIONS[:4]


def test_bad_prompt_lines_give_one_line_each(tmp_path: Path) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text("\n".join([
        json.dumps({"prompt": "fine"}),
        "{not json",
        json.dumps({"text": "no prompt here"}),
        "",
        json.dumps({"messages": [{"role": "assistant", "content": "no user"}]}),
        json.dumps([1, 2]),
        json.dumps({"prompt": "also fine"}),
    ]) + "\n")
    with pytest.raises(PromptFileError) as exc:
        load_prompts(file)
    lines = str(exc.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "3", "5", "6"]
    assert all(line.startswith(f"{file}:") for line in lines)
    assert exc.value.problems == tuple(lines)


def test_missing_or_empty_prompt_file_is_one_line(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.jsonl", tmp_path):  # tmp_path: a folder, no valid.jsonl
        with pytest.raises(PromptFileError) as exc:
            load_prompts(path)
        assert len(str(exc.value).splitlines()) == 1
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompts(tmp_path / "empty.jsonl")


# -- the engine side ------------------------------------------------------------------------

def test_eval_equals_mlx_lm_and_restores_the_adapter(llama_engine, demo_kit, data_dir):
    """Replies at temperature 0 equal a fresh mlx_lm.load with the adapter; the validation
    loss equals mlx-lm's evaluate run directly; the adapter active before is active after."""
    import numpy as np
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import evaluate

    before = llama_engine.use_adapter(str(demo_kit.adapter("tone-b")), 0.5).result_sync(30)
    candidates = [EvalCandidate("base"),
                  EvalCandidate("tone-a", str(demo_kit.adapter("tone-a"))),
                  EvalCandidate("tone-d", str(demo_kit.adapter("tone-d"))),
                  EvalCandidate("tone-a x0", str(demo_kit.adapter("tone-a")), 0.0)]
    seen: list[object] = []
    stream = evaluate_on_engine(llama_engine, candidates, PROMPTS,
                                SamplingParams(max_tokens=MAX_TOKENS), valid_data=str(data_dir))
    for event in stream:
        seen.append(event)
    report = stream.wait()
    from engine import Result

    assert isinstance(report, Result), report
    report = report.value
    assert isinstance(report, EvalReport)
    assert state_of(llama_engine) == (before.path, 0.5)

    progress = [e for e in seen if isinstance(e, EvalProgress)]
    assert [(p.done, p.total) for p in progress] == [(i, 12) for i in range(1, 13)]
    assert [p.stage for p in progress].count("loss") == 4
    assert len([e for e in seen if isinstance(e, EvalReply)]) == 8
    assert report.prompts == ["What does a decorator do?", "Another one?"]

    from types import SimpleNamespace

    # Scale 0 is the base model again (mlx-lm's wrappers add scale * the LoRA term).
    for i in range(len(PROMPTS)):
        assert report.reply(i, "tone-a x0").text == report.reply(i, "base").text
    assert report.val_loss["tone-a x0"] == pytest.approx(report.val_loss["base"], abs=1e-6)
    for cand in candidates[:3]:
        adapter = Path(cand.adapter) if cand.adapter else None
        for i, messages in enumerate(PROMPTS):
            reply = report.reply(i, cand.label)
            assert reply is not None and reply.tokens > 0
            assert reply.text == reference_reply(demo_kit.llama, messages, MAX_TOKENS,
                                                 adapter=adapter), (cand.label, i)
        model, tokenizer = load(str(demo_kit.llama),
                                adapter_path=str(adapter) if adapter else None)
        _train, valid, _test = load_local_dataset(data_dir, tokenizer,
                                                  SimpleNamespace(mask_prompt=False))
        np.random.seed(0)
        expected = evaluate(model, CacheDataset(valid), batch_size=4, num_batches=25)
        assert report.val_loss[cand.label] == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert report.perplexity[cand.label] == pytest.approx(np.exp(expected), rel=1e-5)
    assert len({report.val_loss[c.label] for c in candidates[:3]}) == 3  # adapters matter


def test_cancel_and_errors_restore_the_adapter(llama_engine, demo_kit, tmp_path):
    """A cancel after the first reply, or a candidate that cannot be used, ends the run
    with one line, and the adapter active before is active again."""
    from common.errors import WorkbenchError

    tone_a = str(demo_kit.adapter("tone-a"))
    llama_engine.use_adapter(tone_a).result_sync(30)
    params = SamplingParams(max_tokens=4)
    candidates = [EvalCandidate("tone-d", str(demo_kit.adapter("tone-d"))),
                  EvalCandidate("base")]

    def cancelled_after_first_reply(core, swap, emit, _cancel):
        stop = threading.Event()

        def emit_and_stop(event):
            emit(event)
            if isinstance(event, EvalProgress):
                stop.set()

        return run_eval(core, swap, candidates, PROMPTS, params, emit_and_stop, stop)

    final = llama_engine.with_adapter_swaps(cancelled_after_first_reply).wait(60)
    assert final.kind == "cancelled", final
    assert state_of(llama_engine) == (tone_a, 1.0)

    missing = tmp_path / "missing-adapter"
    final = evaluate_on_engine(llama_engine, [EvalCandidate("base"),
                                              EvalCandidate("gone", str(missing))],
                               PROMPTS[:1], params).wait(60)
    assert final.kind == "adapter" and "\n" not in final.message, final
    assert final.message.startswith("gone: ")
    assert state_of(llama_engine) == (tone_a, 1.0)

    final = evaluate_on_engine(llama_engine, [EvalCandidate("base")], PROMPTS[:1], params,
                               valid_data=str(tmp_path / "no-data")).wait(60)
    assert final.kind == "data" and "\n" not in final.message, final

    with pytest.raises(WorkbenchError):
        from jobs.evaluate import check_candidates

        check_candidates([EvalCandidate("x"), EvalCandidate("x")])


# -- exports --------------------------------------------------------------------------------

def sample_report() -> EvalReport:
    cands = [EvalCandidate("base"), EvalCandidate("tone-a x0.5", "/a/tone-a", 0.5)]
    return EvalReport(
        model="llama", candidates=cands, prompts=["Hi | there"],
        replies=[EvalReply(0, "base", "Hello ``` fence", 3, 100.0),
                 EvalReply(0, "tone-a x0.5", "Ahoy", 2, 90.0)],
        val_loss={"base": 2.0, "tone-a x0.5": None},
        perplexity={"base": 7.38905609893065, "tone-a x0.5": None},
        conversations=[[{"role": "user", "content": "Hi | there"}]])


def test_exports_are_written_new_and_never_replace_a_file(tmp_path: Path) -> None:
    report = sample_report()
    data = json.loads(report.to_json())
    assert data["schema"] == "workbench-eval" and data["version"] == 1
    assert data["val_loss"] == {"base": 2.0, "tone-a x0.5": None}
    assert [r["text"] for r in data["replies"]] == ["Hello ``` fence", "Ahoy"]
    md = report.to_markdown()
    assert "| base | (base model) | - | 2.0000 | 7.389 | 100.0 | 3 |" in md
    assert "````text\nHello ``` fence\n````" in md  # a reply's fence cannot end the block
    assert "**tone-a x0.5**" in md

    target = write_new_file(tmp_path / "r.md", md)
    assert target.read_text() == md
    (tmp_path / "keep.json").write_text("mine")
    with pytest.raises(ExportExists) as exc:
        write_new_file(tmp_path / "keep.json", report.to_json())
    assert "\n" not in str(exc.value)
    assert (tmp_path / "keep.json").read_text() == "mine"


# -- the command ----------------------------------------------------------------------------

def test_eval_command_writes_reports_and_refuses_existing_files(demo_kit, tmp_path, capsys,
                                                                data_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hello."}])
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    args = ["eval", "--model", str(demo_kit.llama), "--adapter", str(demo_kit.adapter("tone-a")),
            "--adapter", f"{demo_kit.adapter('tone-a')}@0.5", "--prompts", str(prompts),
            "--data", str(data_dir), "--val-batches", "1", "--max-tokens", "6",
            "--markdown", str(md), "--json", str(js)]
    assert main(args) == 0
    data = json.loads(js.read_text())
    assert [c["label"] for c in data["candidates"]] == ["base", "tone-a", "tone-a x0.5"]
    assert data["candidates"][2]["scale"] == 0.5
    assert len(data["replies"]) == 3 and all(v is not None for v in data["val_loss"].values())
    assert md.read_text().startswith("# Evaluation of llama")
    capsys.readouterr()

    before = (md.read_text(), js.read_text())
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: ") and "already exists" in err[0]
    assert (md.read_text(), js.read_text()) == before


def test_eval_command_prints_each_bad_prompt_line(demo_kit, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"messages": 3}\n[]\n')
    assert main(["eval", "--model", str(demo_kit.llama), "--prompts", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"workbench: {bad}:") for line in err)
    assert "Traceback" not in "".join(err)


@pytest.mark.parametrize(("extra", "needle"), [
    ([], "needs prompts"),
    (["--data", "/nonexistent/data"], "no such data folder"),
    (["--prompts", "/nonexistent.jsonl"], "no such file"),
    (["--prompts", "P", "--adapter", "nope@x"], "after @"),
])
def test_eval_command_errors_are_one_line(demo_kit, tmp_path, capsys, extra, needle):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    extra = [str(prompts) if a == "P" else a for a in extra]
    code = main(["eval", "--model", str(demo_kit.llama), *extra])
    assert code in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: ") and needle in err[0], err


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: workbench eval" in out and "--markdown" in out and "--data" in out


def test_a_prompt_too_long_for_the_context_and_truncated_data_are_notices(demo_kit, data_dir,
                                                                          capsys):
    """A prompt the context cannot hold gets no reply (finish "context") and the others go
    on; mlx-lm's warning about truncated validation examples is a notice, not stdout."""
    from engine import Engine, Notice

    long_prompt = [{"role": "user", "content": " ".join(QUESTIONS * 6)}]
    with Engine(max_kv_size=64) as engine:
        engine.load(str(demo_kit.llama)).result_sync(120)
        notices: list[str] = []
        stream = evaluate_on_engine(engine, [EvalCandidate("base")], [long_prompt, PROMPTS[0]],
                                    SamplingParams(max_tokens=4), valid_data=str(data_dir),
                                    max_seq_length=8)
        for event in stream:
            if isinstance(event, Notice):
                notices.append(event.message)
        report = stream.wait().value
    first, second = report.reply(0, "base"), report.reply(1, "base")
    assert first.finish_reason == "context" and first.text == "" and first.prompt_tokens > 64
    assert second.tokens > 0 and second.finish_reason in ("length", "stop")
    assert any("prompt 1" in n and "context" in n for n in notices), notices
    assert any("truncated to 8" in n for n in notices), notices
    assert report.val_loss["base"] is not None
    assert "WARNING" not in capsys.readouterr().out


def test_eval_and_fuse_modules_import_no_ui_library_nor_mlx():
    """jobs/'s eval and fuse modules are light: no UI library, no MLX at import (the
    hygiene test covers engine/'s top level only)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import jobs.evaluate, jobs.fuse, jobs.fuse_child\n"
            "print(','.join(m for m in ('textual', 'rich', 'prompt_toolkit', 'mlx.core', "
            "'mlx_lm') if m in sys.modules))\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
