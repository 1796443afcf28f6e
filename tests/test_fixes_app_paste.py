"""Issue 19 #4: a bracketed paste holding terminal escapes is one paste (escapes dropped),
never keys that send it; a paste while the chat has the focus lands in the prompt."""

from __future__ import annotations

from textual import events

from tests.test_app_first_hour import WIDE, make_app, ready, until

# What a terminal sends for three lines copied from a coloured log (lines end in CR).
COPIED = "first \x1b[31mred\x1b[0m line\rsecond \x1b]0;title\x07line\rthird \x1b[1;32mgreen\x1b[m"
BRACKETED = "\x1b[200~" + COPIED + "\x1b[201~"


def read_as_the_terminal_driver_does(chunks: list[str]) -> list[events.Event]:
    """The app's input parser, as ``workbench`` runs it, fed ``chunks`` as reads."""
    from textual.drivers import linux_driver

    from workbench.tui.paste import install

    install()
    parser = linux_driver.XTermParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_a_bracketed_paste_with_escapes_is_one_paste_and_no_keys() -> None:
    wanted = "first red line\rsecond line\rthird green"
    for cut in (None, 3, 9, 20, 40, len(BRACKETED) - 4):  # one read, or split anywhere
        chunks = [BRACKETED] if cut is None else [BRACKETED[:cut], BRACKETED[cut:]]
        got = read_as_the_terminal_driver_does(["x", *chunks, "y"])
        keys = [e.key for e in got if isinstance(e, events.Key)]
        pastes = [e.text for e in got if isinstance(e, events.Paste)]
        assert keys == ["x", "y"], (cut, keys)  # no Enter, no ^[ among them
        assert pastes == [wanted], cut


async def test_a_paste_while_the_chat_has_the_focus_goes_to_the_prompt_unsent() -> None:
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await ready(pilot)
        app.chat_view.focus()
        await until(pilot, lambda: app.focused is app.chat_view, "the chat's focus")
        app.post_message(events.Paste(COPIED))
        await until(pilot, lambda: app.prompt.text != "", "the paste in the prompt")
        assert app.prompt.text == "first red line\nsecond line\nthird green"
        assert app.focused is app.prompt
        assert app.engine.chats == []  # type: ignore[attr-defined]  # a paste never sends
        assert app.chat.conversation.messages == []
