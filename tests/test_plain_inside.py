"""Line mode's branches and logprobs, against fresh mlx-lm runs of each branch's rendered
conversation: `/edit`, `/branches`, `/branch N`, an adapter swap on one branch, a save and a
resume in a new process, and ``--jsonl --logprobs K``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import reference_reply

MAX = 6


def plain(demo_kit, lines: str, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(demo_kit.llama), "--max-tokens", str(MAX), "--temp", "0", *extra],
        input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def replies(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o.get("role") == "assistant"]


def command(objs: list[dict], name: str) -> list[dict]:
    return [o for o in objs if o.get("command") == name]


@pytest.mark.slow
def test_branches_stay_exact_through_switches_a_swap_and_a_resume(demo_kit, tmp_path) -> None:
    sessions = tmp_path / "sessions"
    adapter = demo_kit.adapter("tone-a")
    where = ("--sessions-dir", str(sessions), "--session", "tree",
             "--adapters", str(demo_kit.adapters("llama")))
    objs = plain(demo_kit, "\n".join([
        "hi", "second", "/edit 2 another second", "/branches", "/branch 1", "third",
        "/branch 2", "/adapter tone-a", "and now?", "/adapter none", "/branch 1",
    ]) + "\n", *where)
    assert all(o.get("ok", True) for o in objs), objs
    r = [o["content"] for o in replies(objs)]
    hi, second, edited, third, swapped = r
    user = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": hi}]
    assert hi == reference_reply(demo_kit.llama, user[:1], MAX)
    one = [*user, {"role": "user", "content": "second"}]
    assert second == reference_reply(demo_kit.llama, one, MAX)
    two = [*user, {"role": "user", "content": "another second"}]
    assert edited == reference_reply(demo_kit.llama, two, MAX)
    assert replies(objs)[2]["branch"] == "2/2"
    listing = command(objs, "branches")[0]["message"].splitlines()
    assert len(listing) == 2 and listing[1].startswith("*")  # the new one is shown
    one += [{"role": "assistant", "content": second}, {"role": "user", "content": "third"}]
    assert third == reference_reply(demo_kit.llama, one, MAX)
    two += [{"role": "assistant", "content": edited}, {"role": "user", "content": "and now?"}]
    assert swapped == reference_reply(demo_kit.llama, two, MAX, adapter=adapter)

    saved = tomllib.loads((sessions / "tree.toml").read_text())
    assert saved["schema"] == 2
    assert {m["content"] for m in saved["messages"]} >= {"second", "another second", third}

    # A new process: the tree is back as last left (the commands after the last reply are
    # saved too, issue 19 #9 and #19: branch 1, no adapter), and branch 1 continues
    # exactly under tone-a.
    objs = plain(demo_kit, "/branches\n/adapter tone-a\nlast one\n", *where)
    listing = command(objs, "branches")[0]["message"].splitlines()
    assert len(listing) == 2 and listing[0].startswith("*")
    last = replies(objs)[0]
    assert last["adapter"] == "tone-a"
    one += [{"role": "assistant", "content": third}, {"role": "user", "content": "last one"}]
    assert last["content"] == reference_reply(demo_kit.llama, one, MAX, adapter=adapter)


@pytest.mark.slow
def test_jsonl_logprobs_are_mlx_lm_s(demo_kit) -> None:
    from mlx_lm import load, stream_generate

    objs = plain(demo_kit, "Tell me about classes.\n", "--logprobs", "3")
    reply = replies(objs)[0]
    probs = reply["logprobs"]
    model, tokenizer = load(str(demo_kit.llama))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about classes."}], add_generation_prompt=True)
    reference = list(stream_generate(model, tokenizer, prompt, max_tokens=MAX))
    assert [p["id"] for p in probs] == [r.token for r in reference]
    for p, r in zip(probs, reference, strict=True):
        assert p["logprob"] == pytest.approx(r.logprobs[r.token].item(), abs=1e-4)
        assert len(p["top"]) == 3 and p["top"][0]["id"] == r.token  # greedy: the best
        assert p["text"] == tokenizer.decode([r.token])


def test_bad_logprobs_is_one_line(demo_kit) -> None:
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "chat", "--plain",
                           "--jsonl", "--logprobs", "500", "--model", str(demo_kit.llama)],
                          input="", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "logprobs" in proc.stderr
