"""The full-screen app driven by a Pilot, on the scripted fake engine (tests/fake_engine.py).

What the app does with what an engine says (streaming, stats, cancel, edit, settings, keys,
themes) needs no model: these tests run on ``FakeEngine`` behind the same ``EngineAPI``
(``fake_app``), with no MLX. The tests of the other app files that depend on the real model
(its replies, adapters, caches, memory) use ``real_app``: the real engine and the llama demo
model (no network).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import threading
from collections.abc import Callable

from rich.console import Console
from textual import events
from textual.keys import _character_to_key
from textual.pilot import Pilot
from textual.widgets import Digits, Input, Static
from textual.widgets.markdown import MarkdownBlock

from tests.fake_engine import DEFAULT_REPLY, FakeEngine, words
from workbench.cli import make_args
from workbench.config import Config, load_config, save_config
from workbench.tui.app import WorkbenchApp
from workbench.tui.commands import commands
from workbench.tui.screens.help import HelpScreen
from workbench.tui.screens.settings import SettingsScreen
from workbench.tui.widgets import AssistantTurn, Gauge, UserTurn
from workbench.tui.widgets.visible import visible

SIZE = (120, 40)
FAKE_MODEL = "fake-model"  # a scripted model of the fake engine: no files, no MLX


def fake_app(fake: FakeEngine | None = None, *, max_tokens: int = 24, **overrides
             ) -> WorkbenchApp:
    """The app on the scripted fake engine (``--model fake-model`` unless ``model`` is given:
    the startup's model choice never builds the demo kit)."""
    overrides.setdefault("model", FAKE_MODEL)
    args = make_args(temperature=0.0, seed=0, max_tokens=max_tokens, **overrides)
    return WorkbenchApp(args, engine=fake if fake is not None else FakeEngine())


def real_app(demo_kit, *, max_tokens: int = 24, **overrides) -> WorkbenchApp:
    """The app on the real engine with the llama demo model: for the tests whose assertions
    depend on the model itself (greedy replies, adapters changing them, caches, memory)."""
    overrides.setdefault("model", str(demo_kit.llama))
    args = make_args(temperature=0.0, seed=0, max_tokens=max_tokens, **overrides)
    return WorkbenchApp(args)


def fake_of(app: WorkbenchApp) -> FakeEngine:
    assert isinstance(app.engine, FakeEngine)
    return app.engine


def sent(app: WorkbenchApp, index: int = -1) -> list[tuple[str, str]]:
    """The messages of the engine's ``index``-th chat request (as (role, text) pairs)."""
    return [(m["role"], m["content"]) for m in fake_of(app).chats[index].messages]


def streamed(reply: str, tokens: int) -> str:
    """What the fake writes for ``reply`` with ignore_eos, ``tokens`` pieces long."""
    return "".join(itertools.islice(itertools.cycle(words(reply)), tokens))


def said(app: WorkbenchApp) -> list[tuple[str, str]]:
    """The conversation as (role, text) pairs: what the engine is sent and a save writes."""
    return [(m.role, m.content) for m in app.chat.conversation.messages]


def roles(app: WorkbenchApp) -> list[str]:
    return [role for role, _ in said(app)]


def status_text(app: WorkbenchApp) -> str:
    """What the status line shows."""
    return str(app.status_line.query_one("#status-state", Static).render())


async def until(pilot: Pilot, condition: Callable[[], bool], what: str,
                timeout: float = 60.0) -> None:
    """Let the app run until ``condition`` holds (the timeout only guards against a hang)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.02)


async def type_text(pilot: Pilot, text: str) -> None:
    """Type ``text`` into the focused widget: one key event per character, sent through the
    driver as ``Pilot.press`` sends them, but without its wait for the whole process to idle
    after every key (about 70 ms a key on a busy machine); returns once all are handled."""
    app = pilot.app
    driver = app._driver
    assert driver is not None
    for char in text:
        event = events.Key(char if char.isalnum() else _character_to_key(char), char)
        event.set_sender(app)
        driver.send_message(event)
    await pilot.pause()


async def send(pilot: Pilot, text: str) -> None:
    """Type ``text`` and press Enter (the Pilot waits while the app is busy, up to a point)."""
    await type_text(pilot, text)
    await pilot.press("enter")


async def start_sending(pilot: Pilot, text: str) -> None:
    """Type ``text`` and send it with the Enter binding's action, returning at once, so that
    the test can look at the app while the reply streams."""
    app = pilot.app
    assert isinstance(app, WorkbenchApp)
    await type_text(pilot, text)
    app.prompt.action_send()
    await until(pilot, lambda: app.chat_view.last_assistant() is not None, "the reply turn")


def turns(app: WorkbenchApp) -> list[UserTurn | AssistantTurn]:
    return app.chat_view.turns()


def last_reply(app: WorkbenchApp) -> AssistantTurn:
    turn = app.chat_view.last_assistant()
    assert turn is not None
    return turn


def stats_line(turn: AssistantTurn) -> str:
    return str(turn.query_one(".turn-stats", Static).render())


async def reply_done(pilot: Pilot, app: WorkbenchApp) -> AssistantTurn:
    await until(pilot, lambda: app.chat_view.last_assistant() is not None
                and last_reply(app).done and not app.chat.replying, "the reply to finish")
    return last_reply(app)


async def test_reply_streams_into_the_chat() -> None:
    app = fake_app(FakeEngine(tokens_per_s=400), max_tokens=160)
    app.chat.ignore_eos = True
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await start_sending(pilot, "Tell me about lists")
        assert [type(t) for t in turns(app)] == [UserTurn, AssistantTurn]
        assert turns(app)[0].text == "Tell me about lists"
        turn = last_reply(app)
        # While the reply is being written, part of it is already on screen.
        await until(pilot, lambda: bool(turn.markdown.source) or turn.done, "the first text")
        assert not turn.done, "the first text should show before the reply ends"
        partial = turn.markdown.source
        turn = await reply_done(pilot, app)
        assert len(turn.markdown.source) > len(partial)
        assert turn.markdown.source == visible(turn.text)
        assert turn.text == streamed(DEFAULT_REPLY, 160)  # every piece, in order
        assert said(app)[-1] == ("assistant", turn.text)
        assert roles(app) == ["user", "assistant"]
        request = fake_of(app).chats[-1]
        assert sent(app) == [("user", "Tell me about lists")]
        assert request.ignore_eos and request.params.max_tokens == 160
        line = stats_line(turn)
        assert "160 tokens" in line and "tok/s" in line and "first token" in line
        assert "stopped at max tokens" in line
        assert app.prompt.text == ""  # the box was cleared for the next message


async def test_throughput_and_memory_panes_change_during_and_after_a_reply() -> None:
    app = fake_app(FakeEngine(tokens_per_s=400), max_tokens=200)
    app.chat.ignore_eos = True
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        rate = app.sidebar.throughput.query_one("#decode-rate", Digits)
        kv = app.sidebar.memory.query_one("#mem-kv", Gauge)
        context = app.sidebar.model.query_one("#context-gauge", Gauge)
        await until(pilot, lambda: app.sidebar.memory.reading is not None, "a memory reading")
        assert rate.value == "0.0"
        kv_before = kv.text
        await start_sending(pilot, "hello")
        # During the reply: the decode rate and its sparkline move, before the reply ends.
        await until(pilot, lambda: rate.value != "0.0" or last_reply(app).done,
                    "a decode rate")
        assert not last_reply(app).done, "the rate should show while the reply streams"
        await until(pilot, lambda: max(app.sidebar.throughput.samples) > 0
                    or last_reply(app).done, "a sparkline sample")
        assert max(app.sidebar.throughput.samples) > 0
        await reply_done(pilot, app)
        await pilot.pause(0.3)  # let the 10 Hz repaint run
        facts = str(app.sidebar.throughput.query_one("#throughput-facts", Static).render())
        assert "200 tok" in facts and "ms" in facts
        assert float(rate.value) > 0
        reading = app.sidebar.memory.reading
        assert reading is not None and reading.kv_bytes > 0
        assert kv.text != kv_before
        assert context.value > 0 and context.text.endswith("/4096")


async def test_escape_stops_a_reply_and_the_next_message_works() -> None:
    fake = FakeEngine()
    app = fake_app(fake, max_tokens=3000)
    app.chat.ignore_eos = True
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        fake.pause_after(12)  # the reply waits there, mid-way, for the Esc
        await start_sending(pilot, "write a long story")
        turn = last_reply(app)
        await until(pilot, lambda: len(turn.text) > 20, "some reply text")
        assert fake.paused.is_set() and not turn.done
        await pilot.press("escape")
        turn = await reply_done(pilot, app)
        assert "cancelled" in stats_line(turn) and "12 tokens" in stats_line(turn)
        assert turn.has_class("-cancelled")
        assert said(app)[-1] == ("assistant", turn.text) == ("assistant", streamed(
            DEFAULT_REPLY, 12))
        # The next message gets a complete reply.
        conversation = app.chat.conversation
        conversation.params = conversation.params.with_values(max_tokens=16)
        await send(pilot, "and now a short one")
        second = await reply_done(pilot, app)
        assert second is not turn
        assert "16 tokens" in stats_line(second) and "cancelled" not in stats_line(second)
        assert roles(app) == ["user", "assistant"] * 2


async def test_escape_during_prefill_gives_the_message_back() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        # Hold the engine thread so that the reply cannot begin before Esc.
        release = threading.Event()
        app.engine.submit(lambda _core, _emit, _cancel: release.wait(30))
        await send(pilot, "never mind")
        await pilot.press("escape")
        release.set()
        await until(pilot, lambda: not app.chat.replying, "the cancelled turn to end")
        await pilot.pause(0.1)
        assert turns(app) == []
        assert said(app) == []
        assert app.prompt.text == "never mind"
        assert "back in the prompt box" in status_text(app)


async def test_regenerate_replaces_the_last_reply() -> None:
    fake = FakeEngine(replies=["The first answer.", "Another answer, longer."])
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await send(pilot, "hi there")
        first = await reply_done(pilot, app)
        assert first.text == "The first answer."
        await pilot.press("ctrl+r")
        await until(pilot, lambda: last_reply(app) is not first, "a new reply turn")
        second = await reply_done(pilot, app)
        assert [type(t) for t in turns(app)] == [UserTurn, AssistantTurn]
        assert roles(app) == ["user", "assistant"]
        # The new reply takes the old one's place, on screen and in the conversation; it
        # was asked for the same prompt (without the old reply), read from the cache.
        assert second.text == second.markdown.source == said(app)[-1][1]
        assert second.text == "Another answer, longer."
        assert sent(app, 0) == sent(app, 1) == [("user", "hi there")]
        assert re.search(r"\d+ prompt tokens? from cache", stats_line(second))


async def test_edit_copy_history_and_new_chat() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await send(pilot, "first try")
        reply = await reply_done(pilot, app)
        await pilot.press("ctrl+o")
        assert app.clipboard == reply.text
        # Edit: the message comes back into the box, and leaves the conversation.
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.prompt.text == "first try"
        assert said(app) == [] and turns(app) == []
        await pilot.press("backspace", *"ay", "enter")
        await reply_done(pilot, app)
        assert said(app)[0] == ("user", "first tray")
        assert sent(app) == [("user", "first tray")]  # the edited message, alone
        # Up in the empty box recalls sent messages, newest first.
        await pilot.press("up")
        assert app.prompt.text == "first tray"
        await pilot.press("up")
        assert app.prompt.text == "first try"
        await pilot.press("down", "down")
        assert app.prompt.text == ""
        # Ctrl+J inserts a newline instead of sending.
        await pilot.press(*"two", "ctrl+j", *"lines")
        assert app.prompt.text == "two\nlines" and len(said(app)) == 2
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert said(app) == [] and turns(app) == []
        assert app.prompt.text == "two\nlines"  # a new chat keeps what is being typed
        await pilot.press("enter")
        await reply_done(pilot, app)
        assert sent(app) == [("user", "two\nlines")]  # the old conversation is not sent


async def test_a_bad_sampling_value_is_refused_with_a_message() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        before = app.chat.conversation.params
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        screen = app.screen
        field = screen.query_one("#field-temperature", Input)
        field.value = "9"
        await pilot.pause()
        hint = str(screen.query_one("#hint-temperature", Static).render())
        assert "out of range" in hint and "0 to 5" in hint
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is screen, "a bad value must not close the settings"
        assert "Not applied: temperature" in str(
            screen.query_one("#settings-error", Static).render())
        assert app.chat.conversation.params == before
        # Fix it, add a system prompt, and apply.
        field.value = "0.5"
        screen.query_one("#system-prompt").load_text("Be brief.")  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen), "the close")
        assert app.chat.conversation.params == before.with_values(temperature=0.5)
        assert app.chat.conversation.engine_messages() == [
            {"role": "system", "content": "Be brief."}]


async def test_a_preset_fills_the_fields_and_save_as_default_writes_the_config() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        screen = app.screen
        screen.query_one("#preset").value = "creative"  # type: ignore[attr-defined]
        await pilot.pause()
        assert screen.query_one("#field-temperature", Input).value == "1"
        assert screen.query_one("#field-min_p", Input).value == "0.05"
        await pilot.click("#save-default")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen), "the close")
        params = app.chat.conversation.params
        assert params.temperature == 1.0 and params.min_p == 0.05
        assert params.max_tokens == 24  # a preset leaves the reply length alone
    saved = load_config()
    assert saved.sampling.temperature == 1.0 and saved.sampling.max_tokens == 24


async def test_sending_during_the_load_waits_with_a_note() -> None:
    app = fake_app()
    release = threading.Event()
    # The engine runs requests in order: this holds it before the model load begins.
    app.engine.submit(lambda _core, _emit, _cancel: release.wait(30))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "are you there")
        turn = last_reply(app)
        assert not app.models.ready
        assert "waiting for the model to finish loading" in stats_line(turn)
        release.set()
        turn = await reply_done(pilot, app)
        assert app.models.ready and "tokens" in stats_line(turn)
        assert turn.text == DEFAULT_REPLY and sent(app) == [("user", "are you there")]


async def test_a_missing_model_says_so_and_keeps_the_message(tmp_path) -> None:
    # A folder spec: the fake finds it with the real models.resolve, as Engine.load does.
    app = fake_app(model=str(tmp_path / "nope"))
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one("#banner", Static)
        await until(pilot, lambda: banner.display and "could not be loaded" in str(
            banner.render()), "the load error")
        assert "no such folder" in str(banner.render())
        await send(pilot, "hello?")
        await until(pilot, lambda: not app.chat.replying, "the refusal")
        await pilot.pause(0.1)
        assert said(app) == [] and turns(app) == []
        assert app.prompt.text == "hello?"
        assert "no model is loaded" in status_text(app).lower()


async def test_demo_model_is_labelled() -> None:
    app = fake_app(FakeEngine(is_demo=True))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        banner = str(app.query_one("#banner", Static).render())
        assert "DEMO model: random weights" in banner and "--model" in banner


async def test_keys_are_remapped_from_the_config_and_listed_in_help() -> None:
    save_config(Config(keys={"regenerate": "ctrl+g", "no-such-action": "f9"}))
    app = fake_app(FakeEngine(replies=["first", "regenerated"]))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        assert any("no-such-action" in n.message for n in app._notifications)
        await send(pilot, "hi")
        first = await reply_done(pilot, app)
        await pilot.press("ctrl+g")
        await until(pilot, lambda: last_reply(app) is not first, "a regenerated reply")
        assert (await reply_done(pilot, app)).text == "regenerated"
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        table = app.screen.query_one("#help-table", Static)
        rows = [r.keys for r in app.screen.rows]  # type: ignore[attr-defined]
        assert "^g" in rows and "^r" not in rows
        # What the help screen shows: the remapped key beside what it does, and its id.
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(table.content)
        shown = console.export_text()
        regenerate = next(line for line in shown.splitlines() if "regenerate" in line)
        assert "^g" in regenerate and "Generate the last reply again" in regenerate
        assert "^r" not in shown
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_theme_choice_is_remembered_and_a_bad_theme_is_reported() -> None:
    app = fake_app(theme="no-such-theme")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        assert app.theme == "workbench-dark"
        assert any("unknown theme 'no-such-theme'" in n.message for n in app._notifications)
        app.theme = "workbench-light"
        await pilot.pause()
    assert load_config().theme == "workbench-light"
    app = fake_app()
    async with app.run_test(size=SIZE):
        assert app.theme == "workbench-light"


async def test_command_palette_lists_the_actions() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE):
        titles = [c.title for c in commands(app)]
        titles += [c.title for c in app.get_system_commands(app.screen)]  # Textual's own
        for title in ("Regenerate the last reply", "Stop the reply", "New conversation",
                      "Copy the last reply", "Edit and resend the last message",
                      "Settings: system prompt and sampling", "Help: keys", "Theme"):
            assert title in titles


async def test_ctrl_q_quits_cleanly_and_closes_the_engine() -> None:
    app = fake_app(FakeEngine(tokens_per_s=200), max_tokens=3000)
    app.chat.ignore_eos = True
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.models.ready, "the model to load")
        await start_sending(pilot, "keep going")
        await until(pilot, lambda: bool(last_reply(app).text), "reply text")
        await pilot.press("ctrl+q")
    assert app.return_code == 0
    assert not fake_of(app)._thread.is_alive()


async def test_control_characters_in_a_reply_cannot_reach_the_terminal() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.chat_view.add_user("paste\x07")
        turn = await app.chat_view.add_assistant("llama")
        turn.write("plain \x1b[2J\x1b]0;title\x07 text\tand\nlines\x7f")
        await turn.finish()
        await pilot.pause()
        source = turn.markdown.source
        assert "\x1b" not in source and "\x07" not in source and "\x7f" not in source
        assert "␛[2J" in source and "\tand\nlines␡" in source
        # What the reply's blocks show on screen: the pictures, never the raw characters.
        shown = "".join(str(block.visual) for block in turn.markdown.query(MarkdownBlock))
        assert "␛[2J" in shown and "\x1b" not in shown and "\x07" not in shown
        user = str(app.chat_view.turns()[0].render())
        assert "paste␇" in user and "\x07" not in user

