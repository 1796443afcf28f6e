"""Branches of a conversation: regenerate and edit make siblings, nothing is lost, switching
shows each branch as it was, and the session file keeps the whole tree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine import TurnDone, TurnStats
from sessions.transcript import Session, parse_session
from workbench.conversation import Conversation


def done(text: str) -> TurnDone:
    return TurnDone(text, TurnStats(3, 0, 3, 1.0, 0.1, 10.0, 2, "stop", 0, 0))


def texts(conv: Conversation) -> list[str]:
    return [m.content for m in conv.messages]


def chat(*pairs: str) -> Conversation:
    conv = Conversation()
    for user, reply in zip(pairs[::2], pairs[1::2], strict=True):
        conv.add_user(user)
        conv.add_reply(done(reply))
    return conv


def test_regenerating_keeps_the_old_reply_as_a_sibling() -> None:
    conv = chat("hi", "one")
    conv.pop_reply()
    assert texts(conv) == ["hi"]
    conv.add_reply(done("two"))
    assert texts(conv) == ["hi", "two"]
    assert conv.siblings(1) == (2, 2)
    assert conv.switch_branch(1, -1)
    assert texts(conv) == ["hi", "one"] and conv.siblings(1) == (1, 2)
    assert not conv.switch_branch(1, -1)  # no branch before the first
    assert conv.switch_branch(1, +1)
    assert texts(conv) == ["hi", "two"]


def test_editing_an_earlier_message_branches_from_there() -> None:
    conv = chat("a", "A", "b", "B", "c", "C")
    conv.edit(2, "b2")
    assert texts(conv) == ["a", "A", "b2"]
    conv.add_reply(done("B2"))
    assert conv.siblings(2) == (2, 2) and conv.siblings(0) == (1, 1)
    conv.switch_branch(2, -1)
    assert texts(conv) == ["a", "A", "b", "B", "c", "C"]  # the old branch, whole
    listed = conv.branch_list()
    assert [b.current for b in listed] == [True, False]
    assert listed[1].last == "B2" and listed[1].fork_points == (2,)
    assert conv.select_branch(2)
    assert texts(conv) == ["a", "A", "b2", "B2"]


def test_a_failed_turn_on_a_new_branch_gives_the_old_one_back() -> None:
    conv = chat("a", "A", "b", "B")
    conv.edit(2, "b2")
    assert conv.drop_unanswered() == "b2"  # the turn failed before its first token
    assert texts(conv) == ["a", "A", "b", "B"]
    assert conv.siblings(2) == (1, 1)
    conv.pop_reply()  # regenerate, then the turn fails
    conv.drop_unanswered()
    assert texts(conv) == ["a", "A", "b", "B"]


def test_the_session_file_keeps_the_tree_and_old_files_open() -> None:
    conv = chat("a", "A", "b", "B")
    conv.pop_reply()
    conv.add_reply(done("B2"))
    conv.edit(0, "a2")
    conv.add_reply(done("A2"))
    text = conv.session.to_toml()
    assert "schema = 2" in text
    back = Conversation(parse_session("s", text))
    assert texts(back) == ["a2", "A2"]
    assert [b.last for b in back.branch_list()] == [b.last for b in conv.branch_list()]
    back.switch_branch(0, -1)
    assert texts(back) == ["a", "A", "b", "B2"] and back.siblings(3) == (2, 2)
    old = ('schema = 1\n[[messages]]\nrole = "user"\ncontent = "x"\n'
           '[[messages]]\nrole = "assistant"\ncontent = "y"\n')
    assert texts(Conversation(parse_session("old", old))) == ["x", "y"]


def every_message(session: Session) -> list[str]:
    from sessions.branches import flatten

    return sorted(m.content for m, *_ in flatten(session.messages))


@given(st.lists(st.tuples(st.sampled_from(["say", "regen", "edit", "prev", "next", "fail",
                                           "pick"]),
                          st.integers(0, 9)), max_size=25))
def test_no_operation_loses_a_message(ops: list[tuple[str, int]]) -> None:
    conv = Conversation()
    written: list[str] = []
    for counter, (op, n) in enumerate(ops, 1):
        if op == "say" or not conv.messages:
            conv.add_user(f"u{counter}")
            conv.add_reply(done(f"r{counter}"))
            written += [f"u{counter}", f"r{counter}"]
        elif op == "regen":
            conv.pop_reply()
            conv.add_reply(done(f"r{counter}"))
            written.append(f"r{counter}")
        elif op == "edit":
            users = [i for i, m in enumerate(conv.messages) if m.role == "user"]
            conv.edit(users[n % len(users)], f"e{counter}")
            conv.add_reply(done(f"r{counter}"))
            written += [f"e{counter}", f"r{counter}"]
        elif op in ("prev", "next"):
            conv.switch_branch(n % len(conv.messages), -1 if op == "prev" else 1)
        elif op == "fail":
            users = [i for i, m in enumerate(conv.messages) if m.role == "user"]
            conv.edit(users[n % len(users)], "lost")
            conv.drop_unanswered()
        else:
            listed = conv.branch_list()
            conv.select_branch(listed[n % len(listed)].number)
        assert every_message(conv.session) == sorted(written)
        roles = [m.role for m in conv.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
    back = parse_session("s", conv.session.to_toml())
    assert every_message(back) == sorted(written)
    assert texts(Conversation(back)) == texts(conv)
