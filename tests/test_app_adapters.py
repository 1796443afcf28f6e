"""Adapters in the app, driven by a Pilot.

The Adapters pane lists what it finds (valid or why not), Enter activates, the next reply
records the adapter that wrote it; a refused adapter is one notification and changes
nothing; compare answers the last message under two choices and keeps the one picked.

On the scripted fake engine (``fake_adapter_app``: adapters shaped like the demo kit's,
replies that say which adapter wrote them) except where a real adapter must change what the
model writes (``real_adapter_app``: the llama demo model and its demo adapters).
"""

from __future__ import annotations

import json
from pathlib import Path

from test_app import (
    SIZE,
    fake_app,
    last_reply,
    real_app,
    reply_done,
    roles,
    said,
    send,
    sent,
    until,
)
from textual.pilot import Pilot
from textual.widgets import Button, Select, Static

from tests.fake_engine import FakeEngine, fake_adapter
from workbench.config import Config, save_config
from workbench.tui.app import WorkbenchApp
from workbench.tui.commands import commands
from workbench.tui.screens.adapter_details import AdapterDetailsScreen
from workbench.tui.screens.compare import CompareScreen
from workbench.tui.widgets import AssistantTurn

FULL_MODEL_REASON = "is a full model, not an adapter"
FAKE_ADAPTERS = "/fake/adapters/llama"  # --adapters DIR of the fake apps


def fake_adapters(root: Path | None = None) -> FakeEngine:
    """A fake engine with adapters like the demo kit's (tone-a, tone-b, tone-d in
    ``FAKE_ADAPTERS``); with ``root``, also the config's adapters folder ``root/my-adapters``
    holding a full fine-tune (invalid, with the real inspector's reason). Each reply says
    which adapter (and scale) wrote it, for which message and how long a conversation."""
    adapters = [
        fake_adapter("tone-a", f"{FAKE_ADAPTERS}/tone-a", rank=4, num_layers=2, layers=(2, 3)),
        fake_adapter("tone-b", f"{FAKE_ADAPTERS}/tone-b", rank=8, num_layers=4),
        fake_adapter("tone-d", f"{FAKE_ADAPTERS}/tone-d", rank=4, num_layers=3,
                     layers=(1, 2, 3), fine_tune_type="dora")]
    if root is not None:
        folder = root / "my-adapters"
        adapters.append(fake_adapter("full-tune", str(folder / "full-tune"), reason=(
            "full-tune is a full model, not an adapter (fine_tune_type full replaces every "
            "weight, so it cannot be swapped): use it with mlx_lm --adapter-path, or fuse it "
            "into a model with mlx_lm fuse")))
        save_config(Config(adapters_dir=str(folder)))
    fake = FakeEngine(adapters=adapters)

    def reply(messages: list[dict[str, str]]) -> str:
        state = fake.adapter
        who = f"{state.name} x{state.scale:g}" if state and state.name else "base"
        return f"{who} answers {messages[-1]['content']!r} after {len(messages)} messages."
    fake.reply = reply
    return fake


def fake_adapter_app(root: Path | None = None, **overrides) -> WorkbenchApp:
    return fake_app(fake_adapters(root), adapters=FAKE_ADAPTERS, **overrides)


def real_adapter_app(demo_kit, **overrides) -> WorkbenchApp:
    """The real engine, the llama demo model and its demo adapters."""
    return real_app(demo_kit, adapters=str(demo_kit.adapters("llama")), **overrides)


async def adapters_listed(pilot: Pilot, app: WorkbenchApp) -> list[str]:
    """Wait for the model and the list; return the pane's rows as shown (one per option)."""
    await until(pilot, lambda: app.models.ready and bool(app.adapters.infos), "the adapters")
    await pilot.pause(0.05)
    options = app.adapters.pane.option_list
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def activate_row(pilot: Pilot, app: WorkbenchApp, index: int) -> None:
    """Go to the Adapters pane (F4), move to row ``index`` and press Enter."""
    await pilot.press("f4")
    options = app.adapters.pane.option_list
    assert app.focused is options
    await pilot.press("home", *["down"] * index, "enter")


def active_mark(app: WorkbenchApp) -> list[str]:
    """The rows marked active in the pane (their first line)."""
    options = app.adapters.pane.option_list
    rows = [str(options.get_option_at_index(i).prompt).split("\n")[0]
            for i in range(options.option_count)]
    return [r for r in rows if r.startswith("●")]


def notifications(app: WorkbenchApp) -> list[str]:
    return [n.message for n in app._notifications]


async def test_pane_lists_adapters_and_enter_changes_the_next_replys_adapter(tmp_path) -> None:
    app = fake_adapter_app(tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        rows = await adapters_listed(pilot, app)
        heads = [r.split("\n")[0] for r in rows]
        assert heads == ["● No adapter", "○ tone-a", "○ tone-b", "○ tone-d", "✗ full-tune"]
        assert rows[1].split("\n")[1].strip().startswith("LoRA r4 · layers 2-3 · ")
        assert rows[2].split("\n")[1].strip().startswith("LoRA r8 · layers 0-3 · ")
        assert rows[3].split("\n")[1].strip().startswith("DoRA r4 · layers 1-3 · ")
        assert FULL_MODEL_REASON in rows[4]

        # A first reply from the base model.
        await send(pilot, "hi")
        base = await reply_done(pilot, app)
        assert base.stats is not None and base.stats.adapter is None
        assert base.border_subtitle == "no adapter"
        assert base.text.startswith("base answers 'hi'")

        # Enter on tone-b: the next reply is written under it, and says so.
        await activate_row(pilot, app, 2)
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.name == "tone-b", "the swap")
        await pilot.pause(0.05)
        assert active_mark(app) == ["● tone-b  ×1"]
        assert app.focused is app.prompt, "after choosing, typing goes to the prompt"
        await send(pilot, "and now?")
        turn = await reply_done(pilot, app)
        assert turn is not base
        assert turn.stats is not None and turn.stats.adapter == "tone-b"
        assert turn.stats.scale == 1.0
        assert turn.border_subtitle == "tone-b ×1"
        assert turn.text.startswith("tone-b x1 answers 'and now?' after 3 messages")
        assert base.border_subtitle == "no adapter"  # the earlier reply keeps its own
        # The throughput pane shows what the swap cost.
        swap = str(app.query_one("#swap-facts", Static).render())
        assert "ms → tone-b ×1" in swap and "re-prefill" in swap
        assert f"{turn.stats.reprefill_tokens} tok" in swap

        # "No adapter" from the command palette: back to the base model.
        titles = {c.title: c for c in commands(app)}
        for title in ("Use adapter: tone-a", "Use adapter: tone-b", "Use adapter: tone-d",
                      "No adapter", "Compare adapters on the last message"):
            assert title in titles
        titles["No adapter"].run()
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.name is None, "the swap back")
        await send(pilot, "and plain?")
        plain = await reply_done(pilot, app)
        assert plain.stats is not None and plain.stats.adapter is None
        assert plain.border_subtitle == "no adapter"
        assert plain.text.startswith("base answers")


async def test_an_invalid_adapter_is_listed_with_its_reason_and_refused(tmp_path) -> None:
    app = fake_adapter_app(tmp_path, adapter=[f"{FAKE_ADAPTERS}/tone-a"])
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        rows = await adapters_listed(pilot, app)
        # --adapter PATH is active from the load; it is listed once.
        assert [r.split("\n")[0] for r in rows] == [
            "○ No adapter", "● tone-a  ×1", "○ tone-b", "○ tone-d", "✗ full-tune"]
        await pilot.click("#prompt")
        await pilot.press(*"half-written")
        await activate_row(pilot, app, 4)
        await until(pilot, lambda: any(FULL_MODEL_REASON in m for m in notifications(app)),
                    "the refusal")
        message = next(m for m in notifications(app) if FULL_MODEL_REASON in m)
        assert "\n" not in message
        assert app.engine.adapter is not None and app.engine.adapter.name == "tone-a"
        assert active_mark(app) == ["● tone-a  ×1"]
        assert app.prompt.text == "half-written"
        # The conversation goes on under the adapter that stayed.
        await pilot.click("#prompt")
        await pilot.press("enter")
        turn = await reply_done(pilot, app)
        assert said(app)[0] == ("user", "half-written")
        assert turn.stats is not None and turn.stats.adapter == "tone-a"
        assert turn.text.startswith("tone-a x1 answers 'half-written'")


async def test_details_view_and_scale_control() -> None:
    app = fake_adapter_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await adapters_listed(pilot, app)
        # With no adapter active the scale control is off.
        scale = app.adapters.pane.scale_control
        assert "no adapter" in str(scale.render()) and not scale.enabled
        # d on tone-d shows its config; "Use this adapter" activates it.
        await pilot.press("f4", "home", "down", "down", "down", "d")
        await until(pilot, lambda: isinstance(app.screen, AdapterDetailsScreen), "details")
        screen = app.screen
        assert "Adapter tone-d" in str(screen.query_one(".dialog-title").render())
        config = json.loads(str(screen.query_one("#adapter-config", Static).render()))
        assert config["fine_tune_type"] == "dora"
        assert config["lora_parameters"]["rank"] == 4
        await pilot.click("#use-adapter")
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.name == "tone-d", "the swap")
        # Right arrow on the scale control: 1.3 times the trained scale.
        app.action_adapter_scale()
        await pilot.press("right", "right", "right")
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.scale == 1.3, "the new scale")
        await pilot.pause(0.05)
        assert active_mark(app) == ["● tone-d  ×1.3"]
        assert "1.3×" in str(scale.render())
        await pilot.click("#prompt")
        await send(pilot, "scaled")
        turn = await reply_done(pilot, app)
        assert turn.stats is not None
        assert (turn.stats.adapter, turn.stats.scale) == ("tone-d", 1.3)
        assert turn.border_subtitle == "tone-d ×1.3"
        assert turn.text.startswith("tone-d x1.3 answers 'scaled'")


async def open_compare(pilot: Pilot, app: WorkbenchApp) -> tuple[CompareScreen, str, str]:
    """Press F8; return the compare screen and the labels of its two first picks."""
    await pilot.press("f8")
    await until(pilot, lambda: isinstance(app.screen, CompareScreen), "compare")
    screen = app.screen
    assert isinstance(screen, CompareScreen)
    return screen, screen.picked("a").label, screen.picked("b").label


def compare_turns(screen: CompareScreen) -> list[AssistantTurn]:
    return [t for side in ("a", "b") if (t := screen.turn(side)) is not None]


# Real engine: a real adapter changes what the model writes, greedy decoding gives the base
# model's reply again in compare, and the kept reply's prompt is reused from the real cache.
async def test_compare_shows_two_replies_and_keeps_the_chosen_one(demo_kit) -> None:
    app = real_adapter_app(demo_kit)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await adapters_listed(pilot, app)
        await send(pilot, "tell me something")
        original = await reply_done(pilot, app)
        original_text = original.text
        screen, first, second = await open_compare(pilot, app)
        # The picks start as the active choice and another one; both run on Enter.
        assert (first, second) == ("no adapter", "tone-a ×1")
        await pilot.press("enter")
        await until(pilot, lambda: not screen.query_one("#keep-b", Button).disabled,
                    "both replies")
        left, right = compare_turns(screen)
        assert (left.border_title, right.border_title) == ("no adapter", "tone-a ×1")
        assert left.stats is not None and right.stats is not None
        assert (left.stats.adapter, right.stats.adapter) == (None, "tone-a")
        assert "tokens" in str(left.query_one(".turn-stats", Static).render())
        assert "tokens" in str(right.query_one(".turn-stats", Static).render())
        # Greedy: the base model's answer is the reply the conversation already has.
        assert left.text == original_text
        assert right.text and right.text != left.text
        assert said(app)[-1] == ("assistant", original_text)  # nothing changes until kept

        await pilot.click("#keep-b")
        await until(pilot, lambda: not isinstance(app.screen, CompareScreen), "the close")
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.name == "tone-a", "tone-a active")
        assert said(app)[-1] == ("assistant", right.text)
        assert roles(app) == ["user", "assistant"]
        kept = last_reply(app)
        assert kept.text == right.text and kept.markdown.source == right.text
        assert kept.border_subtitle == "tone-a ×1"
        # The conversation continues under the kept choice.
        await send(pilot, "go on")
        turn = await reply_done(pilot, app)
        assert turn.stats is not None and turn.stats.adapter == "tone-a"
        assert turn.stats.reused_tokens > 0


async def test_closing_compare_keeps_the_reply_and_the_adapter() -> None:
    app = fake_adapter_app(adapter=[f"{FAKE_ADAPTERS}/tone-b"])
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await adapters_listed(pilot, app)
        await pilot.press("f8")
        assert not isinstance(app.screen, CompareScreen)
        assert any("Send a message first" in m for m in notifications(app))
        await send(pilot, "hello")
        original = await reply_done(pilot, app)
        screen, first, second = await open_compare(pilot, app)
        assert (first, second) == ("tone-b ×1", "no adapter")
        # Two adapters this time: tone-b (active) against tone-d.
        labels = [c.label for c in screen.choices]
        screen.query_one("#pick-b", Select).value = labels.index("tone-d ×1")
        await pilot.click("#run-compare")
        await until(pilot, lambda: not screen.query_one("#keep-b", Button).disabled,
                    "both replies")
        left, right = compare_turns(screen)
        assert left.stats is not None and right.stats is not None
        assert (left.stats.adapter, right.stats.adapter) == ("tone-b", "tone-d")
        assert (left.border_subtitle, right.border_subtitle) == ("tone-b ×1", "tone-d ×1")
        # Each side answered the conversation up to the last message, under its choice.
        assert left.text == original.text
        assert right.text == "tone-d x1 answers 'hello' after 1 messages."
        assert sent(app, -1) == sent(app, -2) == sent(app, 0) == [("user", "hello")]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CompareScreen), "the close")
        # The reply and the adapter it was written under stay.
        await until(pilot, lambda: app.engine.adapter is not None
                    and app.engine.adapter.name == "tone-b", "tone-b back")
        assert said(app)[-1] == ("assistant", original.text)
        assert last_reply(app) is original and not app.chat.replying
