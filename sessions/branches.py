"""Branches: a conversation is a tree; ``Session.messages`` is the branch being shown.

Regenerating a reply or editing an earlier message starts a new branch at that position,
and nothing is lost: the branch it replaces becomes a *sibling*. In memory the tree is
nested: the message at position ``i`` of the current branch holds ``alternatives``, the
sibling branches that part from it there (each a list: the sibling, then the rest of that
branch, whose own messages may hold further alternatives). Every sibling carries a
``branch_no`` fixed when it was made, so "2/3" means the same branch whichever is shown.

On disk (schema 2) the tree is flat: every message has an ``id`` and a ``parent``; the heads
of the branches not shown carry ``alt = true``. A transcript without ids (schema 1) is one
branch. Plain data, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transcript import SessionMessage

Branch = list["SessionMessage"]


@dataclass
class Parked:
    """A fork waiting for its first message: the branches it keeps as siblings."""

    position: int
    siblings: list[Branch]
    number: int  # the new branch's branch_no


@dataclass(frozen=True)
class BranchInfo:
    """One branch (a leaf of the tree), for a list of them."""

    number: int  # 1-based, in tree order
    current: bool  # the branch shown
    turns: int
    last: str  # the branch's last message, for a preview
    path: tuple[int, ...]  # its messages (object ids: valid while the tree is unchanged)
    fork_points: tuple[int, ...]  # positions where it parts from another branch


def _group(head: SessionMessage) -> list[int]:
    return sorted([head.branch_no, *(alt[0].branch_no for alt in head.alternatives)])


def siblings(messages: Sequence[SessionMessage], index: int) -> tuple[int, int]:
    """``(k, n)``: the message at ``index`` is branch k of the n made at its position."""
    if not 0 <= index < len(messages):
        return 1, 1
    head = messages[index]
    group = _group(head)
    return group.index(head.branch_no) + 1, len(group)


def switch(messages: list[SessionMessage], index: int, number: int) -> bool:
    """Show the sibling ``number`` (a branch_no) at ``index``; False when there is none."""
    if not 0 <= index < len(messages):
        return False
    head = messages[index]
    target = next((alt for alt in head.alternatives if alt[0].branch_no == number), None)
    if target is None:
        return False
    shown = messages[index:]
    others = [alt for alt in head.alternatives if alt is not target]
    head.alternatives = []
    del messages[index:]
    messages.extend(target)
    messages[index].alternatives = [*others, shown]
    return True


def step(messages: list[SessionMessage], index: int, delta: int) -> bool:
    """To the previous (-1) or next (+1) sibling at ``index``, by branch number."""
    if not 0 <= index < len(messages):
        return False
    group = _group(messages[index])
    at = group.index(messages[index].branch_no) + delta
    return 0 <= at < len(group) and switch(messages, index, group[at])


def fork(messages: list[SessionMessage], index: int) -> Parked:
    """Take ``messages[index:]`` off the shown branch, kept as a sibling of what comes."""
    shown = messages[index:]
    siblings_now: list[Branch] = []
    if shown:
        head = shown[0]
        siblings_now = [*head.alternatives, shown]
        head.alternatives = []
    number = max((b[0].branch_no for b in siblings_now), default=0) + 1
    del messages[index:]
    return Parked(index, siblings_now, number)


def attach(parked: Parked, message: SessionMessage) -> None:
    """``message`` starts the new branch: it holds the parked siblings."""
    message.alternatives = parked.siblings
    message.branch_no = parked.number


def restore(messages: list[SessionMessage], parked: Parked) -> None:
    """Back to the branch that was shown before ``fork`` (nothing was added)."""
    del messages[parked.position:]
    if not parked.siblings:
        return
    shown = parked.siblings[-1]
    messages.extend(shown)
    messages[parked.position].alternatives = parked.siblings[:-1]


def _children(branch: Sequence[SessionMessage], offset: int) -> list[Branch]:
    """The branches that continue after ``branch[offset - 1]`` (offset 0: the first
    messages), each a list starting with its first message, in branch-number order."""
    if offset >= len(branch):
        return []
    head = branch[offset]
    return sorted([list(branch[offset:]), *head.alternatives], key=lambda b: b[0].branch_no)


def _leaves(branch: Sequence[SessionMessage], path: tuple[SessionMessage, ...],
            first: int = 0) -> Iterator[tuple[SessionMessage, ...]]:
    """Every full path through ``branch`` (which starts after ``path``): the tree's leaves,
    siblings in branch-number order, so each branch has the same number whichever is shown.
    ``first``: where to look for forks (1 in a sibling: its head's fork is the one above)."""
    for offset in range(first, len(branch)):
        if branch[offset].alternatives:
            for child in _children(branch, offset):
                yield from _leaves(child, (*path, *branch[:offset]), 1)
            return
    yield (*path, *branch)


def branch_list(messages: Sequence[SessionMessage]) -> list[BranchInfo]:
    """Every branch of the tree, numbered in tree order (stable: showing another branch
    does not renumber them)."""
    shown = [id(m) for m in messages]
    out = []
    for number, path in enumerate(_leaves(messages, ()), 1):
        forks = tuple(i for i, m in enumerate(path) if m.alternatives or m.branch_no != 1)
        last = path[-1].content if path else ""
        out.append(BranchInfo(number=number, current=[id(m) for m in path] == shown,
                              turns=sum(1 for m in path if m.role == "user"),
                              last=" ".join(last.split())[:80],
                              path=tuple(id(m) for m in path), fork_points=forks))
    return out


def select(messages: list[SessionMessage], info: BranchInfo) -> bool:
    """Show the branch ``info`` describes (from ``branch_list`` of the same tree)."""
    for depth, wanted in enumerate(info.path):
        if depth < len(messages) and id(messages[depth]) == wanted:
            continue
        if depth >= len(messages):
            return False
        target = next((alt for alt in messages[depth].alternatives if id(alt[0]) == wanted),
                      None)
        if target is None or not switch(messages, depth, target[0].branch_no):
            return False
    return len(messages) == len(info.path)


# -- on disk ---------------------------------------------------------------------------------
def flatten(messages: Sequence[SessionMessage]) -> list[tuple[SessionMessage, int, int, bool]]:
    """Every message of the tree as ``(message, id, parent id, alt)``: the shown branch
    first (ids 1..n), then the others; ``alt`` marks the head of a branch not shown."""
    out: list[tuple[SessionMessage, int, int, bool]] = []

    def add(branch: Sequence[SessionMessage], parent: int, alt: bool) -> None:
        ids = []
        for i, message in enumerate(branch):
            out.append((message, len(out) + 1, parent, alt and i == 0))
            parent = len(out)
            ids.append(parent)
        for i, message in enumerate(branch):
            before = ids[i - 1] if i else (out[ids[0] - 1][2])
            for sibling in sorted(message.alternatives, key=lambda b: b[0].branch_no):
                add(sibling, before, True)

    add(messages, 0, False)
    return out


def rebuild(nodes: Sequence[tuple[SessionMessage, int, int, bool]]) -> list[SessionMessage]:
    """The shown branch, with its alternatives, from ``flatten``'s rows (any order).
    Raises ValueError naming the first id that does not fit a tree."""
    by_id: dict[int, tuple[SessionMessage, int, bool]] = {}
    children: dict[int, list[int]] = {}
    for message, node_id, parent, alt in nodes:
        if node_id in by_id or node_id <= 0:
            raise ValueError(f"id {node_id} is used twice or is not above 0")
        by_id[node_id] = (message, parent, alt)
        children.setdefault(parent, []).append(node_id)
    for node_id, (_message, parent, _alt) in by_id.items():
        if parent and parent not in by_id:
            raise ValueError(f"message {node_id} has parent {parent}, which is not in the file")

    def line(start: int, seen: set[int]) -> Branch:
        branch: Branch = []
        node: int | None = start
        while node is not None:
            if node in seen:
                raise ValueError(f"message {node} is its own ancestor")
            seen.add(node)
            message = by_id[node][0]
            message.alternatives = []
            branch.append(message)
            kids = children.get(node, [])
            node = next((k for k in kids if not by_id[k][2]), None)
        return branch

    def build(parent: int, seen: set[int]) -> Branch:
        kids = children.get(parent, [])
        shown = next((k for k in kids if not by_id[k][2]), None)
        if shown is None:
            return []
        branch = line(shown, seen)
        # every message on it: its alternatives are its parent's other children
        previous = parent
        for message_id, message in zip(_ids(branch, by_id), branch, strict=True):
            for alt in children.get(previous, []):
                if by_id[alt][2]:
                    alt_branch = line(alt, seen)
                    _expand(alt_branch, alt, by_id, children, line, seen)
                    message.alternatives.append(alt_branch)
            previous = message_id
        return branch

    return build(0, set())


def _ids(branch: Branch, by_id: dict[int, tuple[Any, int, bool]]) -> list[int]:
    index = {id(m): node_id for node_id, (m, _p, _a) in by_id.items()}
    return [index[id(m)] for m in branch]


def _expand(branch: Branch, head_id: int, by_id: dict[int, tuple[Any, int, bool]],
            children: dict[int, list[int]], line: Any, seen: set[int]) -> None:
    """The alternatives inside a branch not shown (forks deeper in it)."""
    ids = _ids(branch, by_id)
    for i, message in enumerate(branch):
        if i == 0:
            continue  # the head's siblings belong to the fork above
        parent = ids[i - 1]
        for alt in children.get(parent, []):
            if by_id[alt][2]:
                alt_branch = line(alt, seen)
                _expand(alt_branch, alt, by_id, children, line, seen)
                message.alternatives.append(alt_branch)
