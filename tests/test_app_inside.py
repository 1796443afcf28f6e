"""Seeing inside the conversation (issue 13), in the app, on the scripted fake engine: the
reasoning block, the thinking switch, the token probability view and its alternatives,
"continue with this token", branches (keys, the list) and the cache-miss line."""

from __future__ import annotations

import math

from rich.style import Style
from rich.text import Text
from textual.widgets import OptionList, Static, Switch

from engine import TokenLogprob
from sessions import Session
from tests.fake_engine import FakeEngine
from tests.test_app import (
    SIZE,
    fake_app,
    fake_of,
    last_reply,
    reply_done,
    said,
    send,
    stats_line,
    turns,
    until,
)
from workbench.tui.app import WorkbenchApp
from workbench.tui.commands import commands
from workbench.tui.screens.branches import BranchesScreen
from workbench.tui.screens.settings import SettingsScreen
from workbench.tui.screens.token_choices import TokenChoicesScreen
from workbench.tui.widgets import AssistantTurn
from workbench.tui.widgets.tokens import level

THOUGHT = "<think>Let me think about this.</think>\n\nThe answer is forty two."
ANSWER = "one two three four five six seven"


async def ready(pilot, app: WorkbenchApp) -> None:
    await until(pilot, lambda: app.models.ready, "the model to load")


def title_of(turn: AssistantTurn) -> str:
    block = turn.reasoning_block
    assert block is not None
    return str(block.title)


async def test_reasoning_streams_into_a_block_that_folds_and_opens_by_key() -> None:
    fake = FakeEngine(replies=[THOUGHT])
    app = fake_app(fake, max_tokens=64)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        fake.pause_after(3)  # still thinking: the block is open, its count live
        await send(pilot, "what is six times seven")
        await until(pilot, lambda: fake.paused.is_set(), "the pause in the thinking")
        turn = last_reply(app)
        await until(pilot, lambda: turn.reasoning_block is not None
                    and "3 tokens" in title_of(turn), "the live reasoning block")
        block = turn.reasoning_block
        assert block is not None and not block.collapsed
        assert title_of(turn).startswith("Thinking…")
        fake.release()
        turn = await reply_done(pilot, app)
        # The answer began: the block folded; its title has the turn's reasoning stats.
        assert block.collapsed
        assert title_of(turn).startswith("Reasoning · 5 tokens · ")
        assert turn.reasoning == "Let me think about this."
        assert turn.text == turn.markdown.source == "The answer is forty two."
        assert "5 answer tokens" in stats_line(turn)  # 10 in all, 5 of them thinking
        assert said(app)[-1] == ("assistant", THOUGHT)  # the conversation keeps the tags
        # By keyboard: the chat, the reply selected, Enter opens the block and closes it.
        app.chat_view.focus()
        await pilot.pause()
        assert app.chat_view.selected is turn
        await pilot.press("enter")
        assert not block.collapsed
        await pilot.press("enter")
        assert block.collapsed


async def test_a_saved_reply_with_reasoning_shows_the_same_split() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        session = Session(name="saved")
        session.add_user("hi")
        session.add_reply(THOUGHT, {})
        await app.chat.show(session)
        await pilot.pause()
        turn = last_reply(app)
        block = turn.reasoning_block
        assert block is not None and block.collapsed
        assert block.markdown.source == "Let me think about this."
        assert turn.markdown.source == "The answer is forty two."


async def test_the_thinking_switch_reaches_the_engine() -> None:
    fake = FakeEngine(model_facts={"reasoning": True, "thinking_switch": True})
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, "first")
        await reply_done(pilot, app)
        assert fake.chats[-1].options.template_args == {}  # the template's default
        assert "Thinking: off" in [c.title for c in commands(app)]
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        switch = app.screen.query_one("#thinking", Switch)
        assert switch.value is True
        switch.value = False
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen), "the close")
        await send(pilot, "second")
        await reply_done(pilot, app)
        assert fake.chats[-1].options.template_args == {"enable_thinking": False}
        assert app.chat.conversation.session.to_toml_data()["template"] == {
            "enable_thinking": False}
        # The palette turns it back on.
        command = next(c for c in commands(app) if c.title == "Thinking: on")
        command.run()
        await send(pilot, "third")
        await reply_done(pilot, app)
        assert fake.chats[-1].options.template_args == {"enable_thinking": True}


def background(text: Text, word: str) -> object:
    """The background colour a word of a rendered reply is shaded with (None: none)."""
    at = text.plain.index(word)
    colours = [span.style.bgcolor for span in text.spans
               if span.start <= at < span.end and isinstance(span.style, Style)]
    return next((c for c in colours if c is not None), None)


def shaded(turn: AssistantTurn) -> Text:
    rendered = turn.token_view.render()
    assert isinstance(rendered, Text)
    return rendered


async def test_the_probability_view_shades_tokens_and_continues_from_another() -> None:
    fake = FakeEngine(replies=[ANSWER, ANSWER, "and then some more."])
    app = fake_app(fake, max_tokens=64)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, "count")
        first = await reply_done(pilot, app)
        assert fake.chats[-1].options.logprobs == 0  # off: nothing asked for
        assert first.tokens == [] and first.markdown.display
        await pilot.press("f9")  # on: probability
        assert app.chat.token_mode == "probability"
        assert first.markdown.display  # written with the view off: no tokens to shade
        await send(pilot, "count again")
        turn = await reply_done(pilot, app)
        assert fake.chats[-1].options.logprobs == 5
        assert [t.text for t in turn.tokens] == ["one ", "two ", "three ", "four ", "five ",
                                                 "six ", "seven"]
        assert turn.token_view.display and not turn.markdown.display
        # Every third token is unsure (p = e^-1.6 = 20%): the darkest shade; the rest none.
        text = shaded(turn)
        assert background(text, "three ") is not None and background(text, "six ") is not None
        assert background(text, "one ") is None and background(text, "two ") is None
        assert [level(t, "probability") for t in turn.tokens] == [0, 0, 3, 0, 0, 3, 0]
        assert "probability: " in text.plain and "<30%" in text.plain
        assert math.isclose(turn.tokens[2].logprob, -1.6)
        await pilot.press("f9")  # entropy
        assert "entropy (nats)" in shaded(turn).plain
        assert [level(t, "entropy") for t in turn.tokens] == [0, 0, 2, 0, 0, 2, 0]
        # The token cursor: the chat, the reply, right to "three", Enter: its alternatives.
        app.chat_view.focus()
        await pilot.pause()
        assert app.chat_view.selected is turn
        await pilot.press("right", "right", "right")
        assert turn.token_view.cursor == 2
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TokenChoicesScreen), "the choices")
        options = app.screen.query_one(OptionList)
        labels = [str(o.prompt) for o in options.options]
        assert any("maybe" in label and "30%" in label for label in labels)
        assert any("three" in label and "(chosen)" in label for label in labels)
        assert options.highlighted is not None
        chosen = options.options[options.highlighted]
        assert "maybe" in str(chosen.prompt)
        await pilot.press("enter")  # continue with "maybe " instead of "three "
        await until(pilot, lambda: len(fake.chats) == 3, "the new branch's request")
        branch = await reply_done(pilot, app)
        options_sent = fake.chats[-1].options
        assert options_sent.reply_prefix == (fake.token_id("one "), fake.token_id("two "),
                                             fake.token_id("maybe "))
        assert options_sent.logprobs == 5
        assert branch.text == "one two maybe and then some more."
        assert said(app)[-1] == ("assistant", branch.text)
        # The old reply is kept: a sibling, and the turn says so.
        assert app.chat.conversation.siblings(3) == (2, 2)
        assert "‹2/2›" in str(branch.border_title)
        assert [t.text for t in branch.tokens][:3] == ["one ", "two ", "maybe "]
        # Back to the old one with [, then forward with ].
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: last_reply(app).text == ANSWER, "the old branch")
        old = last_reply(app)
        assert "‹1/2›" in str(old.border_title) and old.tokens  # its tokens kept
        assert said(app)[-1] == ("assistant", ANSWER)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: last_reply(app).text == branch.text, "the new branch")


async def test_branches_from_edits_the_list_and_the_cache_miss_line() -> None:
    fake = FakeEngine(replies=["alpha reply", "beta reply", "edited reply"])
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, "first question")
        await reply_done(pilot, app)
        await send(pilot, "second question")
        await reply_done(pilot, app)
        # Edit the first message (not the last): select it, e, change it, Enter.
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("up", "up", "up")
        assert app.chat_view.selected is turns(app)[0]
        await pilot.press("e")
        await pilot.pause()
        assert app.prompt.text == "first question"
        assert len(turns(app)) == 0  # the branch shown ends before it now
        await pilot.press("escape")  # not now: the conversation is as it was
        await until(pilot, lambda: len(turns(app)) == 4, "the conversation back")
        assert said(app)[-1] == ("assistant", "beta reply")
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("up", "up", "up", "e")
        await until(pilot, lambda: len(turns(app)) == 0, "the edit again")
        app.prompt.focus()
        app.prompt.set_text("first question, edited")
        await pilot.press("enter")
        edited = await reply_done(pilot, app)
        assert edited.text == "edited reply"
        assert said(app) == [("user", "first question, edited"), ("assistant", "edited reply")]
        assert "‹2/2›" in str(turns(app)[0].border_title)
        # The cache held the old branch: the throughput pane says what was lost, and why.
        await pilot.pause(0.3)
        miss = app.sidebar.throughput.query_one("#cache-miss", Static)
        assert miss.display
        assert "cache miss:" in str(miss.render()) and "an earlier" in str(miss.render())
        assert "another branch" in str(miss.tooltip)
        facts = str(app.sidebar.throughput.query_one("#throughput-facts", Static).render())
        assert "reused" in facts and "new" in facts
        # The list of branches: two, the edited one shown; Enter on the other shows it.
        await pilot.press("f10")
        await until(pilot, lambda: isinstance(app.screen, BranchesScreen), "the branches")
        listed = app.screen.query_one(OptionList)
        assert listed.option_count == 2
        rows = [str(o.prompt) for o in listed.options]
        current = next(r for r in rows if r.startswith("●"))
        assert "edited reply" in current
        other = next(i for i, r in enumerate(rows) if not r.startswith("●"))
        assert "beta reply" in rows[other]
        listed.highlighted = other
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, BranchesScreen), "the close")
        await until(pilot, lambda: len(turns(app)) == 4, "the old branch on screen")
        assert [t.text for t in turns(app)] == ["first question", "alpha reply",
                                                "second question", "beta reply"]
        assert said(app)[-1] == ("assistant", "beta reply")
        assert "‹1/2›" in str(turns(app)[0].border_title)
        assert fake_of(app).chats[-1].messages[0]["content"] == "first question, edited"


async def test_a_failed_regenerate_brings_the_old_reply_back() -> None:
    fake = FakeEngine(replies=["the only reply"])
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, "hello")
        await reply_done(pilot, app)
        fake.fail_next_turn("out of memory")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(fake.chats) == 2 and not app.chat.replying,
                    "the failed regenerate")
        await until(pilot, lambda: last_reply(app).text == "the only reply", "the old reply")
        assert said(app) == [("user", "hello"), ("assistant", "the only reply")]
        assert app.prompt.text == ""  # nothing to give back: the message is still there


def test_token_levels() -> None:
    def token(logprob: float, entropy: float) -> TokenLogprob:
        return TokenLogprob(0, 1, "x", logprob, entropy)

    assert [level(token(math.log(p), 0), "probability") for p in (0.95, 0.7, 0.4, 0.1)] \
        == [0, 1, 2, 3]
    assert [level(token(0, e), "entropy") for e in (0.1, 1.0, 2.0, 4.0)] == [0, 1, 2, 3]
