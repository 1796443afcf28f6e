"""Why a turn reused less of the prompt cache than the cache held: the reason in words.

A turn's prompt normally starts with everything the cache holds (the last prompt and
reply). When it does not, the first differing token tells where the conversations part;
the message that holds that position tells why: the system prompt changed, the template
rendered the last reply differently at the seam (or dropped an earlier reply's reasoning),
an earlier message differs (an edit, another branch), or a sliding-window or recurrent cache
could not be cut back. After an adapter change (``explain_swap``, the core's to call) the
line says what the swap cost and, when the conversation also changed, why the rest could not
be reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .prompt_cache import common_prefix

CONTEXT_TOKENS = 4  # tokens shown on each side of the first difference
SEAM = "the template rendered the last reply differently (the seam)"

Render = Callable[[Sequence[Mapping[str, str]]], list[int]]
Decode = Callable[[list[int]], str]


def _owner(render: Render, messages: Sequence[Mapping[str, str]], position: int) -> int:
    """Index of the message whose rendering holds token ``position`` (len(messages): the
    template's generation prompt). Binary search over rendered prefixes."""
    lo, hi = 1, len(messages)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(render(messages[:mid])) > position:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(messages) and len(render(messages)) <= position:
        return len(messages)
    return lo - 1


def _why(messages: Sequence[Mapping[str, str]], owner: int) -> str:
    if owner >= len(messages):
        return "the template ended the conversation differently"
    role = messages[owner].get("role", "")
    if role == "system":
        return "the system prompt changed"
    later_replies = [i for i in range(owner + 1, len(messages))
                     if messages[i].get("role") == "assistant"]
    if role == "assistant" and not later_replies:
        return SEAM
    if role == "assistant":
        return ("the template rendered an earlier reply differently (for example it "
                "dropped that reply's reasoning)")
    return "an earlier message differs (an edit, or another branch)"


def _difference(held: list[int], prompt: list[int], why: str, decode: Decode) -> str:
    """``why`` ``prompt`` parts from ``held``, and where (they must part)."""
    common = common_prefix(held, prompt)

    def around(tokens: list[int]) -> str:
        return repr(decode(tokens[max(0, common - CONTEXT_TOKENS): common + CONTEXT_TOKENS]))

    return (f"{why}; first difference at token {common}: cached {around(held)}, "
            f"new {around(prompt)}")


def explain(held: list[int], prompt: list[int], reused: int,
            messages: Sequence[Mapping[str, str]], render: Render, decode: Decode) -> str:
    """One line saying why ``reused`` is less than ``len(held)``; "" when it is not."""
    lost = len(held) - reused
    if lost <= 0 or not held:
        return ""
    common = common_prefix(held, prompt)
    head = f"reused {reused} of {len(held)} cached tokens"
    if common >= len(prompt) - 1:
        return (f"{head}: the new prompt ends inside what was cached (a regenerated or "
                "edited turn)")
    if reused < common:
        return (f"{head}: the prompts agree on {common} tokens but the model's cache "
                "(sliding-window or recurrent layers) could not be cut back to them, only to "
                "where the last prompt ended")
    why = _why(messages, _owner(render, messages, common))
    return f"{head}: {_difference(held, prompt, why, decode)}"


def explain_swap(before: list[int], prompt: list[int], reused: int,
                 messages: Sequence[Mapping[str, str]], render: Render,
                 decode: Decode) -> tuple[str, int]:
    """After an adapter change: ``before`` is what was cached under the old adapter. The
    part the new prompt shares with it was prefilled again under the new one (the count is
    returned with the line); when the prompt parts from it before it ends (the system
    prompt changed too, a message was edited), the line says that as well, so the adapter
    is not blamed for tokens it did not cost. ("", 0) when nothing was prefilled again."""
    common = common_prefix(before, prompt)
    reprefill = max(0, min(common, len(prompt) - 1) - reused)
    if not reprefill:
        return "", 0
    line = (f"reused {reused} of {len(before)} cached tokens: the adapter changed, so "
            f"{reprefill} tokens were prefilled again under it")
    if common >= len(before) or common >= len(prompt) - 1:
        return line, reprefill
    why = _why(messages, _owner(render, messages, common))
    if why != SEAM:  # a seam costs a token or two on every turn: not worth a word here
        line += (f"; the other {len(before) - common} could not be reused anyway: "
                 f"{_difference(before, prompt, why, decode)}")
    return line, reprefill
