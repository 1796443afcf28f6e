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
from typing import TYPE_CHECKING

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


def _leaves(messages: Sequence[SessionMessage]) -> Iterator[tuple[SessionMessage, ...]]:
    """Every full path through the tree: its leaves, siblings in branch-number order, so each
    branch has the same number whichever is shown. Iterative: a tree nested thousands of
    forks deep is read like a flat one."""
    # (the path before this branch, the branch, where to look for its first fork: 1 in a
    # sibling, whose head's fork is the one above)
    stack: list[tuple[tuple[SessionMessage, ...], Sequence[SessionMessage], int]] = [
        ((), messages, 0)]
    while stack:
        path, branch, first = stack.pop()
        fork = next((o for o in range(first, len(branch)) if branch[o].alternatives), None)
        if fork is None:
            yield (*path, *branch)
            continue
        prefix = (*path, *branch[:fork])
        stack.extend((prefix, child, 1) for child in reversed(_children(branch, fork)))


def branch_list(messages: Sequence[SessionMessage]) -> list[BranchInfo]:
    """Every branch of the tree, numbered in tree order (stable: showing another branch
    does not renumber them)."""
    shown = [id(m) for m in messages]
    out = []
    for number, path in enumerate(_leaves(messages), 1):
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
    first (ids 1..n), then the others, depth first; ``alt`` marks the head of a branch not
    shown. Iterative, so any depth of forks is written."""
    out: list[tuple[SessionMessage, int, int, bool]] = []
    stack: list[tuple[Sequence[SessionMessage], int, bool]] = [(messages, 0, False)]
    while stack:
        branch, parent, alt = stack.pop()
        first_parent, ids = parent, []
        for i, message in enumerate(branch):
            out.append((message, len(out) + 1, parent, alt and i == 0))
            parent = len(out)
            ids.append(parent)
        pending = [(sibling, ids[i - 1] if i else first_parent, True)
                   for i, message in enumerate(branch)
                   for sibling in sorted(message.alternatives, key=lambda b: b[0].branch_no)]
        stack.extend(reversed(pending))  # the first sibling (and all below it) comes next
    return out


def rebuild(nodes: Sequence[tuple[SessionMessage, int, int, bool]],
            problems: list[str] | None = None) -> list[SessionMessage]:
    """The shown branch, with its alternatives, from ``flatten``'s rows (any order).

    Every message is placed or the file is refused: where a message has several children
    and not all but one are marked ``alt`` (a hand edit, another tool), the first unmarked
    one continues the branch and the others become its siblings (noted in ``problems``),
    and sibling numbers that clash are made distinct. Raises ValueError naming the first id
    that does not fit a tree (a duplicate, a missing parent, a loop, an unreachable part).
    Linear in the number of messages, and iterative.
    """
    notes = problems if problems is not None else []
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

    noted: set[int] = set()  # parents whose unmarked children were noted already

    def split(parent: int) -> tuple[int | None, list[int]]:
        """The child of ``parent`` that continues its branch, and the heads of the others."""
        kids = children.get(parent, [])
        if not kids:
            return None, []
        unmarked = [k for k in kids if not by_id[k][2]]
        shown = unmarked[0] if unmarked else kids[0]
        if len(unmarked) > 1 and parent not in noted:
            noted.add(parent)
            notes.append(f"messages {', '.join(str(k) for k in unmarked[1:])} continue "
                         f"message {parent} beside message {shown} without alt = true: "
                         "they are kept as other branches")
        return shown, [k for k in kids if k != shown]

    placed: set[int] = set()
    root: Branch = []
    # (the branch to fill, its first id, the id before it, whether its head's siblings are
    # its own to place: only the shown branch's are; a sibling's belong to the fork above)
    stack: list[tuple[Branch, int, int, bool]] = []
    head, _ = split(0)
    if head is not None:
        stack.append((root, head, 0, True))
    while stack:
        branch, node, before, own_head = stack.pop()
        while True:
            if node in placed:
                raise ValueError(f"message {node} is its own ancestor")
            placed.add(node)
            message = by_id[node][0]
            message.alternatives = []
            branch.append(message)
            if own_head or len(branch) > 1:
                _, others = split(before)
                for other in others:
                    sibling: Branch = []
                    message.alternatives.append(sibling)
                    stack.append((sibling, other, before, False))
                _distinct_numbers(message, by_id, others, notes)
            before = node
            following, _ = split(node)
            if following is None:
                break
            node = following
    if len(placed) != len(by_id):
        lost = min(set(by_id) - placed)
        raise ValueError(f"message {lost} cannot be reached from the first message (its "
                         "parents form a loop)")
    return root


def _distinct_numbers(head: SessionMessage, by_id: dict[int, tuple[SessionMessage, int, bool]],
                      others: list[int], notes: list[str]) -> None:
    """Siblings are told apart by ``branch_no``: renumber the ones that clash."""
    seen = {head.branch_no}
    for other in others:
        message = by_id[other][0]
        if message.branch_no in seen:
            new = max(seen) + 1
            notes.append(f"message {other}: branch {message.branch_no} is taken at its "
                         f"position; it is branch {new} now")
            message.branch_no = new
        seen.add(message.branch_no)
