"""A system prompt changed mid-conversation is kept and exported where it changed (issue 10
#17): the replies before the change were written under the old one."""

from __future__ import annotations

from sessions import Session, export_markdown, parse_session


def conversation() -> Session:
    session = Session(name="talk", system_prompt="Answer in French.")
    session.add_user("Hello")
    session.add_reply("Bonjour")
    session.system_prompt = "Answer in English."
    session.add_user("Hello again")
    session.add_reply("Hello")
    return session


def test_markdown_shows_each_system_prompt_where_it_applied() -> None:
    text = export_markdown(conversation())
    first = text.index("## System\n\nAnswer in French.")
    changed = text.index("## System (changed here)\n\nAnswer in English.")
    assert first < text.index("Bonjour") < changed < text.index("Hello again")


def test_the_transcript_keeps_the_old_prompt_on_the_old_reply() -> None:
    session = conversation()
    data = session.to_toml()
    again = parse_session("talk", data)
    replies = [m for m in again.messages if m.role == "assistant"]
    assert [again.system_prompt_of(m) for m in replies] == ["Answer in French.",
                                                            "Answer in English."]
    assert data.count("system_prompt") == 2  # the session's, and the changed reply's


def test_an_unchanged_prompt_adds_nothing_per_message() -> None:
    session = Session(name="calm", system_prompt="Be brief.")
    session.add_user("Hi")
    session.add_reply("Hi.")
    assert session.to_toml().count("system_prompt") == 1
    assert export_markdown(session).count("## System") == 1
