"""``workbench chat --plain``: a line-mode chat for terminals and pipes.

On a terminal it reads with prompt-toolkit (history file, Alt+Enter for a new line, Ctrl+C
cancels the reply and not the program) and prints with rich. When stdin is not a terminal
it reads one message per line. With ``--jsonl`` every stdout line is one JSON object.
The command itself (flags, session, model load, the input loop) is workbench/plain_run.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import BadSetting, WorkbenchError
from engine import (
    AdapterInfo,
    EngineAPI,
    EngineError,
    Notice,
    SamplingParams,
    TokenLogprob,
    TokenText,
    TurnStats,
    follow_sync,
)
from engine.sampling import parse_value, preset
from sessions import (
    Session,
    SessionStore,
    check_name,
    submit_autosave,
    submit_close,
    submit_resume,
)

from .conversation import Conversation
from .formatting import format_stats, plural
from .plain_io import Output

# Commands that change what the session file keeps (the system prompt, sampling, template
# switches, the branch shown, the adapter): saved at once, as the app does.
SAVED_SETTINGS = frozenset({"system", "set", "preset", "thinking", "branch", "adapter",
                            "scale"})


@dataclass
class Command:
    name: str
    usage: str
    help: str
    run: Callable[[str], tuple[bool, str]]  # argument text -> (ok, message)


class PlainChat:
    """The conversation (a ``Conversation``, saved when a store is given) and the slash
    commands; no terminal code here."""

    def __init__(self, engine: EngineAPI, out: Output, params: SamplingParams,
                 session: Session, store: SessionStore | None = None,
                 adapter_dirs: Sequence[str | Path] = (),
                 adapter_paths: Sequence[str | Path] = ()) -> None:
        self.engine = engine
        self.out = out
        self.conv = Conversation(session)
        self.conv.params = params  # the flags and the config win over what was saved
        self.store = store  # None: the conversation is not saved until /save
        self.adapter_dirs = list(adapter_dirs)
        self.adapter_paths = list(adapter_paths)
        self.last_stats: TurnStats | None = None
        self.logprobs = 0  # top-K alternatives per token in each reply (--logprobs K)
        self.running = True
        self.default_sessions_dir = Path(".")
        self.commands: dict[str, Command] = {}
        for cmd in (
            Command("system", "/system TEXT", "set the system prompt (empty clears it)",
                    self._cmd_system),
            Command("reset", "/reset", "start a new conversation", self._cmd_reset),
            Command("stats", "/stats", "statistics of the last reply", self._cmd_stats),
            Command("set", "/set NAME VALUE", "change a sampling value (temperature, top_p, "
                    "min_p, top_k, repetition_penalty, max_tokens, seed)", self._cmd_set),
            Command("preset", "/preset NAME", "precise, balanced, creative or code",
                    self._cmd_preset),
            Command("adapter", "/adapter NAME|PATH|none", "use a LoRA adapter, or none, from "
                    "the next reply on (no reload)", self._cmd_adapter),
            Command("adapters", "/adapters", "list the adapters found, valid or why not",
                    self._cmd_adapters),
            Command("scale", "/scale X", "the active adapter's scale, 0 to 2 times trained",
                    self._cmd_scale),
            Command("save", "/save NAME", "save the conversation as session NAME (and "
                    "autosave to it from now on)", self._cmd_save),
            Command("load", "/load NAME", "open session NAME, resuming its cache",
                    self._cmd_load),
            Command("branches", "/branches", "the conversation's branches (* = shown)",
                    self._cmd_branches),
            Command("branch", "/branch N", "show branch N (see /branches)", self._cmd_branch),
            Command("edit", "/edit N TEXT", "say TEXT instead of your Nth message: a new "
                    "branch from there (the old one is kept)", self._cmd_edit),
            Command("thinking", "/thinking on|off|default", "the template's enable_thinking "
                    "switch (reasoning models)", self._cmd_thinking),
            Command("help", "/help", "this list", self._cmd_help),
            Command("quit", "/quit", "leave (Ctrl+D too)", self._cmd_quit),
        ):
            self.commands[cmd.name] = cmd

    @property
    def session(self) -> Session:
        return self.conv.session

    # -- commands ------------------------------------------------------------------------
    def _cmd_system(self, arg: str) -> tuple[bool, str]:
        self.conv.system_prompt = arg
        return True, "system prompt cleared" if not arg else "system prompt set"

    def _cmd_reset(self, _arg: str) -> tuple[bool, str]:
        """A new conversation. A saved session is never emptied: it is closed as it is, and
        the new conversation is saved under a new name (autosave goes on there)."""
        store, old = self.store, self.session
        if store is None or not old.messages:
            self.conv.clear()
            self.engine.reset().result_sync()
            return True, "new conversation"
        self.close_session()
        name = store.unique_name(old.name)
        store.acquire(name)
        self.conv.replace_session(old.fresh_copy(name))
        store.release(old.name)
        self.engine.reset().result_sync()
        return True, (f"new conversation, saved as {name} from its first reply; "
                      f"session {old.name} is kept as it was")

    def _adapter_infos(self) -> list[AdapterInfo]:
        return self.engine.list_adapters(self.adapter_dirs, self.adapter_paths).result_sync()

    def _cmd_adapter(self, arg: str) -> tuple[bool, str]:
        if not arg:
            return False, "usage: /adapter NAME|PATH|none (/adapters lists them)"
        path: str | None = None
        if arg.lower() != "none":
            named = [i for i in self._adapter_infos() if i.name == arg]
            path = str(named[0].path) if named else str(Path(arg).expanduser())
        state = self.engine.use_adapter(path).result_sync()
        self.conv.set_adapter(state)
        if state.info is None:
            return True, f"no adapter (swap {state.swap_ms:.2f} ms)"
        return True, (f"adapter {state.name} active, scale {state.scale:g} "
                      f"(swap {state.swap_ms:.2f} ms)")

    def _cmd_adapters(self, _arg: str) -> tuple[bool, str]:
        infos = self._adapter_infos()
        if not infos:
            return True, ("no adapters found: pass --adapters DIR (a folder of adapter "
                          "folders) or --adapter PATH")
        active = str(self.engine.info.adapter or "") if self.engine.info else ""
        lines = []
        for info in infos:
            mark = "*" if active and str(info.path) == active else " "
            state = "ok" if info.valid else f"invalid: {info.reason}"
            lines.append(f"{mark} {info.name}  {info.type_label}  {info.layers_label}  "
                         f"{state}")
        if active:
            lines.append("(* = in use)")
        return True, "\n".join(lines)

    def _cmd_scale(self, arg: str) -> tuple[bool, str]:
        try:
            scale = float(arg)
        except ValueError:
            return False, "usage: /scale X, a number from 0 to 2 (times the trained scale)"
        state = self.engine.set_adapter_scale(scale).result_sync()
        self.conv.set_adapter(state)
        return True, f"adapter {state.name} scale {state.scale:g}"

    def _cmd_save(self, arg: str) -> tuple[bool, str]:
        if not arg:
            return False, "usage: /save NAME"
        name = check_name(arg)
        store = self.store or SessionStore(self.default_sessions_dir)
        if name != self.session.name and store.exists(name):
            return False, f"a session named {name!r} exists already: /load it or pick another"
        old_name, old_store = self.session.name, self.store
        self.session.name, self.store = name, store
        problem = self.autosave(whole=True)  # the standard cache file, mlx_lm can read it
        if problem is not None:  # keep saving where it worked before, if anywhere
            self.session.name, self.store = old_name, old_store
            return False, f"not saved: {problem}"
        if old_store is not None and old_name != name:
            store.release(old_name)
        return True, f"saved as {name} in {store.folder}; autosaving from now on"

    def _cmd_load(self, arg: str) -> tuple[bool, str]:
        if not arg:
            return False, "usage: /load NAME"
        store = self.store or SessionStore(self.default_sessions_dir)
        session = store.open(check_name(arg), lock=True)
        if self.store is not None and self.session.name != session.name:
            self.close_session()
            self.store.release(self.session.name)
        params = self.conv.params
        self.store, self.conv = store, Conversation(session)
        self.conv.params = params
        return True, self.resume()

    def resume(self) -> str:
        """Put the session's cache (or a re-prefill of its transcript) into the engine."""
        if self.session.adapter:
            self.engine.use_adapter(self.session.adapter,
                                    self.session.adapter_scale).result_sync()
        assert self.store is not None
        report = submit_resume(self.engine, self.store, self.session).result_sync()
        if report.notice:
            self.out.notice(report.notice)
        how = (f"cache reused ({plural(report.cached_tokens, 'token')})" if report.reused
               else f"{plural(report.prefilled_tokens, 'token')} prefilled again")
        return f"session {self.session.name}: {plural(self.session.turns, 'turn')}, {how}"

    def autosave(self, whole: bool = False) -> str | None:
        """Save to the store, if any (the prompt cache: what is new, or with ``whole`` the
        standard single file); the problem in one line when it could not."""
        if self.store is None:
            return None
        try:
            report = submit_autosave(self.engine, self.store, self.session,
                                     whole).result_sync()
        except EngineError as exc:
            return str(exc)
        finally:
            for notice in self.store.take_notices():  # e.g. the folder was made private
                self.out.notice(notice)
        self.session.updated = report.transcript.saved_at
        return None

    def close_session(self) -> None:
        """Leaving the session (another /load, or the end): its prompt cache is written
        whole, as the standard file ``mlx_lm generate --prompt-cache-file`` reads (nothing
        is written when that file holds it already)."""
        if self.store is None or not self.session.messages:
            return
        try:
            closed = submit_close(self.engine, self.store, self.session).result_sync()
        except EngineError as exc:
            self.out.notice(f"the prompt cache was not written whole: {exc}")
            return
        if closed.skipped and closed.kind == "none" and closed.path is None \
                and "could not" in closed.skipped:
            self.out.notice(closed.skipped)

    def _cmd_branches(self, _arg: str) -> tuple[bool, str]:
        lines = [f"{'*' if b.current else ' '}{b.number:>3}  {plural(b.turns, 'turn')}: "
                 f"{b.last or '(empty)'}"
                 for b in self.conv.branch_list()]
        return True, "\n".join(lines) if lines else "no messages yet"

    def _cmd_branch(self, arg: str) -> tuple[bool, str]:
        listed = self.conv.branch_list()
        try:
            number = int(arg)
        except ValueError:
            return False, f"/branch takes a number from 1 to {len(listed)} (see /branches)"
        if not self.conv.select_branch(number):
            return False, f"there is no branch {number}: /branches lists 1 to {len(listed)}"
        shown = next(b for b in self.conv.branch_list() if b.current)
        return True, f"branch {number}: {plural(shown.turns, 'turn')}, last: {shown.last}"

    def _cmd_edit(self, arg: str) -> tuple[bool, str]:
        number, _, text = arg.partition(" ")
        users = [i for i, m in enumerate(self.conv.messages) if m.role == "user"]
        if not number.isdigit() or not text.strip():
            return False, "usage: /edit N TEXT (N: which of your messages, 1 = the first)"
        if not 1 <= int(number) <= len(users):
            return False, f"there is no message {number} of yours: you have sent {len(users)}"
        self.conv.edit(users[int(number) - 1], text.strip())
        if not self._reply():  # the edit is taken back: the branch shown is as it was
            return False, f"message {number} not edited: its reply failed (see above)"
        return True, f"message {number} edited: a new branch (/branches lists them)"

    def _cmd_thinking(self, arg: str) -> tuple[bool, str]:
        choice = arg.strip().lower()
        if choice not in ("on", "off", "default"):
            return False, "usage: /thinking on|off|default"
        self.conv.set_thinking(None if choice == "default" else choice == "on")
        return True, f"thinking {choice} (from the next reply on)"

    def _cmd_stats(self, _arg: str) -> tuple[bool, str]:
        if self.last_stats is None:
            return False, "no reply yet"
        return True, format_stats(self.last_stats)

    def _cmd_set(self, arg: str) -> tuple[bool, str]:
        name, _, value = arg.partition(" ")
        if not name or not value.strip():
            return False, "usage: /set NAME VALUE, e.g. /set temperature 0.7"
        try:
            self.conv.params = self.conv.params.with_values(**{name: parse_value(name, value)})
        except BadSetting as exc:
            return False, str(exc)
        return True, f"{name} = {getattr(self.conv.params, name)}"

    def _cmd_preset(self, arg: str) -> tuple[bool, str]:
        try:
            self.conv.params = preset(arg.strip(), max_tokens=self.conv.params.max_tokens)
        except BadSetting as exc:
            return False, str(exc)
        return True, f"preset {arg.strip()}: " + ", ".join(
            f"{k}={v}" for k, v in self.conv.params.to_dict().items())

    def _cmd_help(self, _arg: str) -> tuple[bool, str]:
        width = max(len(c.usage) for c in self.commands.values())
        lines = [f"{c.usage:<{width}}  {c.help}" for c in self.commands.values()]
        return True, "\n".join(lines)

    def _cmd_quit(self, _arg: str) -> tuple[bool, str]:
        self.running = False
        return True, "bye"

    # -- input ---------------------------------------------------------------------------
    def handle_line(self, line: str) -> None:
        text = line.rstrip("\n")
        if not text.strip():
            return
        if text.startswith("/") and not text.startswith("//"):
            name, _, arg = text[1:].partition(" ")
            command = self.commands.get(name.strip().lower())
            if command is None:
                self.out.command(name, False, f"unknown command /{name}: /help lists them")
                return
            try:
                ok, message = command.run(arg.strip())
            except WorkbenchError as exc:
                ok, message = False, str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in a command must not end the chat
                ok, message = False, f"/{command.name} failed: {type(exc).__name__}: {exc}"
            self.out.command(command.name, ok, message)
            if ok and command.name in SAVED_SETTINGS:
                self._save_or_say()  # kept even if the chat ends before another reply
            return
        if text.startswith("//"):
            text = text[1:]  # "//x" sends "/x"
        self.send(text)

    def send(self, text: str) -> None:
        self.conv.add_user(text)
        self._reply()

    def _reply(self) -> bool:
        """The reply to the conversation as it stands (it ends with a user message); False
        when the turn failed (it is taken back, the error shown)."""
        stream = self.engine.chat(self.conv.engine_messages(), self.conv.params,
                                  options=self.conv.turn_options(self.logprobs))
        probs: list[dict[str, object]] = []
        kinds: dict[str, list[str]] = {}  # the reply's text by kind, as the engine labelled it

        def piece(event: TokenText) -> None:
            kinds.setdefault(event.kind, []).append(event.text)
            self.out.reply_piece(event.text, event.kind)

        try:
            done = follow_sync(stream, {TokenText: piece,
                                        TokenLogprob: lambda e: probs.append(e.to_dict()),
                                        Notice: lambda e: self.out.notice(e.message)},
                               on_interrupt=self.engine.cancel)  # Ctrl+C stops the reply
        except EngineError as exc:
            self.conv.drop_unanswered()  # the turn did not happen; the text is in the history
            self.out.error(str(exc), exc.kind)
            return False
        stats = done.stats
        self.last_stats = stats
        self.conv.add_reply(done)
        extra: dict[str, object] = {
            "adapter": stats.adapter, "scale": stats.scale,
            "cache_reused": stats.reused_tokens > 0, "prefilled_tokens": stats.prefill_tokens,
        }
        if "reasoning" in kinds:  # as streamed: a block the template opened counts too
            extra["reasoning"] = "".join(kinds["reasoning"])
            extra["answer"] = "".join(kinds.get("answer", ()))
        if done.tool_calls:
            extra["tool_calls"] = [call.to_dict() for call in done.tool_calls]
        if self.logprobs:
            extra["logprobs"] = probs
        for index in (len(self.conv.messages) - 1, len(self.conv.messages) - 2):
            k, n = self.conv.siblings(index)  # a regenerated reply, or an edited message
            if n > 1:
                extra["branch"] = f"{k}/{n}"
                break
        self.out.reply_done(done.text, stats, extra)
        self._save_or_say()
        return True

    def _save_or_say(self) -> None:
        """Autosave; a save that fails is one error line (the chat goes on)."""
        problem = self.autosave()
        if problem is not None:
            self.out.error(f"not saved: {problem}", "session")
