"""Seeing inside the conversation (issue 13): thinking, token probabilities, branches.

``InsideController`` is the chat controller's helper for what goes beyond sending and
streaming: the chat template's thinking switch, the probability view (off → probability →
entropy; replies are asked for with logprobs only while it is on), a token's alternatives
and "continue from here with this token instead", and the branches (regenerate or edit any
turn as a new branch, step between siblings, the list of branches). Every change of branch
goes through ``Conversation`` (``fork``, ``switch_branch``, ``select_branch``) and then the
chat is drawn again from it (``ChatController.render``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import TokenLogprob

from ..widgets.tokens import OFF, PROBABILITY, next_mode

if TYPE_CHECKING:
    from ..app import WorkbenchApp
    from ..screens.token_choices import TokenChoice
    from ..widgets import ChatView
    from .chat import ChatController

MODE_WORDS = {OFF: "off", PROBABILITY: "shaded by probability",
              "entropy": "shaded by entropy"}


class InsideController:
    def __init__(self, app: WorkbenchApp, chat: ChatController) -> None:
        self.app = app
        self.chat = chat

    # -- seeing inside: thinking, token probabilities ------------------------------------
    def set_thinking(self, on: bool) -> None:
        """The chat template's ``enable_thinking``, from the next reply on (kept in the
        session file)."""
        self.chat.conversation.set_thinking(on)
        self.app.notify(f"Thinking {'on' if on else 'off'} from the next reply on.")

    def toggle_thinking(self) -> None:
        self.set_thinking(not self.thinking)

    @property
    def thinking(self) -> bool:
        """Whether the template's thinking is on (its default, when not set, is on)."""
        return bool(self.chat.conversation.template_args.get("enable_thinking", True))

    def cycle_token_view(self, mode: str | None = None) -> None:
        """The probability view: off → probability → entropy (or ``mode``)."""
        chat = self.chat
        chat.token_mode = mode if mode is not None else next_mode(chat.token_mode)
        for turn in self.app.chat_view.turns():
            if hasattr(turn, "set_token_mode"):
                turn.set_token_mode(chat.token_mode)
        words = MODE_WORDS[chat.token_mode]
        more = (" Replies are asked for with their token probabilities from now on "
                "(Up/Down select a reply in the chat, Left/Right a token, Enter its "
                "alternatives).") if chat.token_mode != OFF else ""
        self.app.notify(f"Token view {words}.{more}", timeout=8)

    async def turn_action(self, event: ChatView.TurnAction) -> None:
        """A key on the chat's selected turn (``ChatView.TurnAction``)."""
        if event.action == "open":
            self.open_token(event.index, event.position)
        elif event.action in ("branch-prev", "branch-next"):
            await self.branch_step(event.index, -1 if event.action == "branch-prev" else 1)
        elif event.action == "edit":
            await self.edit(event.index)
        elif event.action == "regenerate":
            await self.regenerate_at(event.index)

    def _turn_tokens(self, index: int) -> list[TokenLogprob]:
        turn = self.app.chat_view.turn_at(index)
        return list(getattr(turn, "tokens", ()))

    def open_token(self, index: int, position: int) -> None:
        """The alternatives of token ``position`` of reply ``index``."""
        from ..screens.token_choices import TokenChoicesScreen

        tokens = self._turn_tokens(index)
        if not 0 <= position < len(tokens):
            return
        before = "".join(t.text for t in tokens[:position])

        async def chosen(choice: TokenChoice | None) -> None:
            if choice is not None:
                await self.continue_with(index, choice)

        self.app.push_screen(TokenChoicesScreen(tokens[position], position, before), chosen)

    async def continue_with(self, index: int, choice: TokenChoice) -> None:
        """A new branch at reply ``index``: the same tokens up to ``choice.position``, then
        ``choice.token``, then whatever the model writes from there. The old reply stays."""
        if self.chat.refuse_while_replying("continue from another token"):
            return
        tokens = self._turn_tokens(index)
        if not 0 <= choice.position < len(tokens) or not self._is_reply(index):
            return
        was = tokens[choice.position]
        prefix = [*tokens[:choice.position],
                  TokenLogprob(index=choice.position, token=choice.token, text=choice.text,
                               logprob=choice.logprob, entropy=was.entropy, top=was.top)]
        self.chat.conversation.fork(index)
        await self.chat.render()
        await self.chat._start_reply(prefix)

    def _is_reply(self, index: int) -> bool:
        messages = self.chat.conversation.messages
        return 0 <= index < len(messages) and messages[index].role == "assistant"

    # -- branches ------------------------------------------------------------------------
    async def regenerate_at(self, index: int) -> None:
        """Write reply ``index`` again, as a new branch there."""
        if self.chat.refuse_while_replying("regenerate"):
            return
        if not self._is_reply(index):
            self.app.notify("Select a reply to regenerate it.", severity="warning")
            return
        self.chat.conversation.fork(index)
        await self.chat.render()
        await self.chat._start_reply()

    async def edit(self, index: int) -> None:
        """Put message ``index`` in the prompt box; sending it starts a new branch there."""
        if self.chat.refuse_while_replying("edit a message"):
            return
        messages = self.chat.conversation.messages
        if not 0 <= index < len(messages) or messages[index].role != "user":
            self.app.notify("Select one of your messages to edit it.", severity="warning")
            return
        text = messages[index].content
        self.chat.conversation.fork(index)
        await self.chat.render()
        self.chat.give_back(text)
        self.app.update_status(note=f"editing message {index + 1}: Enter sends it as a new "
                               "branch (the old one is kept)")

    async def branch_step(self, index: int, step: int) -> None:
        """Show the previous (-1) or next (+1) sibling branch at message ``index``."""
        if self.chat.refuse_while_replying("switch branches"):
            return
        if not self.chat.conversation.switch_branch(index, step):
            k, n = self.chat.conversation.siblings(index)
            self.app.notify("No other branch here." if n == 1 else
                            f"This is branch {k} of {n}: no {'earlier' if step < 0 else 'later'}"
                            " one.", severity="warning")
            return
        await self._branch_changed(index)

    def open_branches(self) -> None:
        from ..screens.branches import BranchesScreen

        if self.chat.refuse_while_replying("switch branches"):
            return

        listed = self.chat.conversation.branch_list()

        async def chosen(number: int | None) -> None:
            if number is not None and self.chat.conversation.select_branch(number):
                await self._branch_changed(None, f"branch {number} of {len(listed)} shown")

        self.app.push_screen(BranchesScreen(listed), chosen)

    async def _branch_changed(self, index: int | None, note: str = "") -> None:
        """The chat drawn again on the branch now shown; the status line says which (what
        it said before, an edit or another branch, is stale now)."""
        await self.chat.render()
        view = self.app.chat_view
        turn = view.turn_at(index) if index is not None else None
        if turn is not None:
            view.select(turn)
            k, n = turn.branch
            note = f"branch {k} of {n} at message {index + 1}"  # type: ignore[operator]
        self.app.update_status(note=note)
        self.app.sessions.turn_finished()  # the branch shown is saved with the session
