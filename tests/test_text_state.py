"""A reply's reasoning, answer and tool-call text, labelled by mlx-lm's own state machine.

Two tiny models whose tokenizers carry markers: one with ``<think>`` and ``<tool_call>``
(its template names tool calls, so mlx-lm infers the ``json_tools`` parser), one with
``<longcat_think>`` (another reasoning marker mlx-lm knows). Each turn starts with a forced
reply that uses the markers, then the model goes on by itself; the labels must be the ones
mlx-lm's ``make_text_state_machine`` gives the same text (the newlines that open a segment
aside), the token ids those of a fresh mlx-lm run, and the tool call read by the tokenizer's
parser. Every model runs on a thread of its own (tests/helpers.on_reference_thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import SamplingParams, TokenText, TurnDone, TurnOptions
from engine.events import ToolCall
from engine.loaded import LoadedModel
from engine.prompt_cache import PromptCaches
from engine.reasoning import add_piece, split_reasoning
from engine.turn import run_turn
from models.demo import DemoSpec, _corpus, build_model
from models.demo_tokenizer import CHAT_TEMPLATE, write_tokenizer
from tests.helpers import on_reference_thread

MAX = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX)
MESSAGES = [{"role": "user", "content": "What time is it?"}]
# A template that renders tool calls the way Qwen-style templates do (mlx-lm reads
# "<tool_call>" and "tool_call.name" in it and picks its json_tools parser).
TOOL_TEMPLATE = (
    "{% for message in messages %}{% for tool_call in message.tool_calls or [] %}"
    "{{ '<tool_call>' + tool_call.name + '</tool_call>' }}{% endfor %}{% endfor %}"
    + CHAT_TEMPLATE
)
CALL = '{"name": "get_time", "arguments": {"zone": "UTC"}}'
THINK_AND_CALL = ("<think>\nThe user wants the time.</think>\n\nChecking."
                  f"<tool_call>\n{CALL}\n</tool_call>")
LONGCAT = "<longcat_think>\nA different marker.</longcat_think>\n\nHello."


def _marked_model(path: Path, markers: list[str], template: str) -> Path:
    """A small random llama whose tokenizer has ``markers`` as whole tokens."""
    spec = DemoSpec(name=path.name, model_type="llama", seed=7, hidden_size=64,
                    num_hidden_layers=2, intermediate_size=128,
                    extra={"vocab_size": 1024 + 32})  # room for the markers' ids
    build_model(path, spec)
    write_tokenizer(path, _corpus(), spec.vocab_size, chat_template=template,
                    extra_tokens=markers)
    return path


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _marked_model(tmp_path_factory.mktemp("tools") / "tools",
                         ["<think>", "</think>", "<tool_call>", "</tool_call>"], TOOL_TEMPLATE)


@pytest.fixture(scope="module")
def longcat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _marked_model(tmp_path_factory.mktemp("longcat") / "longcat",
                         ["<longcat_think>", "</longcat_think>"], CHAT_TEMPLATE)


def _ours(path: Path, forced_text: str) -> dict[str, Any]:
    """Our turn: the reply, its text events and what the model says it can do."""
    loaded = LoadedModel.load(path.name, path, lambda _e: None, available=lambda: 1 << 40,
                              context_hint=4096)
    caches = PromptCaches(max_slots=1)
    caches.model = loaded.model
    forced = loaded.tokenizer.encode(forced_text, add_special_tokens=False)
    events = list(run_turn(loaded, caches, None, MESSAGES, GREEDY, prefill_step=16,
                           options=TurnOptions(reply_prefix=tuple(forced))))
    done = events[-1]
    assert isinstance(done, TurnDone)
    texts = [(e.kind, e.text) for e in events if isinstance(e, TokenText)]
    return {"done": done, "texts": texts, "reasoning": loaded.info.reasoning,
            "tools": loaded.info.tool_calls, "forced": forced}


def _reference(path: Path, forced: list[int]) -> dict[str, Any]:
    """mlx-lm alone: a fresh load, stream_generate, and its state machine over the text,
    started as its server starts it."""
    from mlx_lm import load, stream_generate
    from mlx_lm.generate import TextStateMachine, make_text_state_machine

    model, tokenizer = load(str(path))
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    initial = "normal"
    if tokenizer.has_thinking and (tokenizer.rfind_think_start(prompt)
                                   > tokenizer.rfind_think_end(prompt)):
        initial = "reasoning"
    pieces = [tokenizer.decode(forced)] + [
        r.text for r in stream_generate(model, tokenizer, prompt + forced, max_tokens=MAX)]
    state = make_text_state_machine(tokenizer).make_state(initial)
    labelled: list[tuple[str, str]] = []
    for piece in pieces:
        state, segments = TextStateMachine.split(state, piece)
        labelled += [(s, t) for s, t in segments if s is not None]
    state, held, name = TextStateMachine.flush(state)
    labelled.append((name, held))
    kinds = {"normal": "answer", "reasoning": "reasoning", "tool": "tool"}
    return {"text": "".join(pieces), "labels": [(kinds[s], t) for s, t in labelled],
            "think_start": tokenizer.think_start}


def _runs(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive pieces of one kind joined, the newlines that open a run dropped."""
    runs: list[tuple[str, str]] = []
    for kind, text in pieces:
        add_piece(runs, kind, text)
    joined: list[tuple[str, str]] = []
    for kind, text in runs:
        if text.lstrip("\n"):
            add_piece(joined, kind, text.lstrip("\n"))
    return joined


def _both(path: Path, forced_text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = on_reference_thread(lambda: _ours(path, forced_text))
    return ours, on_reference_thread(lambda: _reference(path, ours["forced"]))


def test_reasoning_answer_and_tool_call_are_labelled_as_mlx_lm_labels_them(tool_model) -> None:
    ours, ref = _both(tool_model, THINK_AND_CALL)
    done = ours["done"]
    assert done.text == ref["text"]  # the same tokens as mlx-lm's own run
    assert _runs(ours["texts"]) == _runs(ref["labels"])
    assert _runs(ours["texts"])[:3] == [("reasoning", "The user wants the time."),
                                        ("answer", "Checking."), ("tool", CALL + "\n")]
    assert "<tool_call>" not in "".join(t for _, t in ours["texts"])
    assert done.tool_calls[0] == ToolCall("get_time", {"zone": "UTC"}, f"\n{CALL}\n")
    assert ours["reasoning"] and ours["tools"]
    assert done.stats.reasoning_tokens == 0  # the block was forced: closed before decoding


def test_a_model_with_other_reasoning_markers_is_split_too(longcat_model) -> None:
    ours, ref = _both(longcat_model, LONGCAT)
    assert ref["think_start"] == "<longcat_think>"
    assert ours["done"].text == ref["text"]
    assert _runs(ours["texts"]) == _runs(ref["labels"])
    reasoning, answer = _runs(ours["texts"])[:2]
    assert reasoning == ("reasoning", "A different marker.")
    assert answer[0] == "answer" and answer[1].startswith("Hello.")
    assert ours["reasoning"] and not ours["tools"] and not ours["done"].tool_calls
    # the saved reply reads back the same way, without a tokenizer
    assert split_reasoning(ours["done"].text)[0] == "A different marker."


# A DeepSeek-R1-style template: the generation prompt opens the reasoning block, so the reply
# starts inside it (mlx-lm's server starts its state machine in "reasoning" then).
OPENS_BLOCK = CHAT_TEMPLATE + "{% if add_generation_prompt %}{{ '<think>\\n' }}{% endif %}"


def test_line_mode_jsonl_splits_a_reply_that_starts_inside_its_reasoning(
        tmp_path_factory) -> None:
    import json
    import subprocess
    import sys

    path = _marked_model(tmp_path_factory.mktemp("opens") / "opens", ["<think>", "</think>"],
                         OPENS_BLOCK)
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--model",
         str(path), "--max-tokens", str(MAX), "--temp", "0"],
        input="What time is it?\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reply = next(o for o in map(json.loads, proc.stdout.splitlines()) if o.get("role"))
    ref = on_reference_thread(lambda: _reference(path, []))
    assert reply["content"] == ref["text"]
    labelled = {kind: "".join(t for k, t in _runs(ref["labels"]) if k == kind)
                for kind in ("reasoning", "answer")}
    assert labelled["reasoning"]  # mlx-lm reads the reply as reasoning
    assert (reply["reasoning"], reply["answer"]) == (labelled["reasoning"], labelled["answer"])


def test_segments_hold_markers_that_arrive_in_parts_and_start_where_the_prompt_left_off(
        tool_model) -> None:
    from mlx_lm.generate import TextStateMachine, make_text_state_machine
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from engine.text_state import TextSegments, initial_state

    tokenizer = load_tokenizer(tool_model)
    machine = make_text_state_machine(tokenizer)
    reply = THINK_AND_CALL + "\nDone."
    for cut in range(len(reply) + 1):
        ours = TextSegments(machine)
        pieces = ours.feed(reply[:cut]) + ours.feed(reply[cut:]) + ours.flush()
        state = machine.make_state("normal")
        state, first = TextStateMachine.split(state, reply[:cut])
        state, second = TextStateMachine.split(state, reply[cut:])
        kinds = {"normal": "answer", "reasoning": "reasoning", "tool": "tool"}
        assert _runs(pieces) == _runs([(kinds[s], t) for s, t in first + second]), cut
        assert ours.tool_texts == [f"\n{CALL}\n"], cut
    opened = tokenizer.encode("Hi<think>\n", add_special_tokens=False)
    closed = tokenizer.encode("Hi<think>\n</think>\n\n", add_special_tokens=False)
    assert (initial_state(tokenizer, opened), initial_state(tokenizer, closed)) == (
        "reasoning", "normal")


def _special(path: Path, tokens: set[str]) -> Path:
    """Mark ``tokens`` special in the folder's tokenizer.json (as real checkpoints do)."""
    import json

    file = path / "tokenizer.json"
    data = json.loads(file.read_text())
    for added in data["added_tokens"]:
        if added["content"] in tokens:
            added["special"] = True
    file.write_text(json.dumps(data))
    return path


def test_a_marker_made_of_special_tokens_stays_in_the_text_and_splits(
        tmp_path_factory) -> None:
    channel = ["<|channel>", "<channel|>"]  # mlx-lm: think_start "<|channel>thought"
    path = _special(_marked_model(tmp_path_factory.mktemp("channel") / "channel", channel,
                                  CHAT_TEMPLATE), set(channel))
    ours, ref = _both(path, "<|channel>thought\nPondering.<channel|>Answer.")
    assert ref["think_start"] == "<|channel>thought"
    assert ours["done"].text == ref["text"]
    assert _runs(ours["texts"]) == _runs(ref["labels"])
    assert _runs(ours["texts"])[0] == ("reasoning", "Pondering.")


def test_the_engine_hands_the_tool_calls_to_its_clients(tool_model) -> None:
    """The engine's TurnDone (what the app, line mode and the coming server read) keeps the
    calls run_turn parsed: the core rebuilt TurnDone from its text and dropped them."""
    from engine import Engine, SamplingParams, TurnOptions

    with Engine() as engine:
        engine.load(str(tool_model)).result_sync(120)
        forced = on_reference_thread(lambda: _ours(tool_model, THINK_AND_CALL))["forced"]
        done = engine.chat(MESSAGES, SamplingParams(temperature=0.0, max_tokens=MAX),
                           options=TurnOptions(reply_prefix=tuple(forced))).result_sync(120)
    assert done.tool_calls and done.tool_calls[0].name == "get_time"
