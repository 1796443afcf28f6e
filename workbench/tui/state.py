"""What the status line says, computed from one small state object.

Each concern writes only its own field (the models controller ``model``/``load``/``job``,
the chat controller ``reply``/``note``, the sessions controller ``session``); the line's
text is a function of the whole, so no one overwrites what another concern is showing: a
reply's phase wins over a load's, a load's over a job's, a job's over the last note.
``WorkbenchApp.status`` holds it as a reactive; ``StatusLine`` repaints when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

Progress = tuple[int, int]  # (done, total); total 0: a bar that only says "busy"


@dataclass(frozen=True, slots=True)
class Status:
    model: str = ""  # the loaded model's name ("" while none is)
    load: str = "starting…"  # what a load is doing now ("" when none runs)
    load_progress: Progress | None = None
    reply: str = ""  # what the reply is doing: reading the prompt, writing, stopping
    job: str = ""  # a running download's or quantization's line
    job_progress: Progress | None = None
    note: str = ""  # the last thing that happened, until something else does
    session: str = ""  # ``NAME · saved 40 s ago`` ("" when the chat is no session yet)

    def with_(self, **changes: object) -> Status:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        """The status line's words."""
        if self.reply:
            return self.reply
        if self.load:
            return self.load
        if self.job:
            return self.job
        if self.note:
            return self.note
        return f"ready · {self.model}" if self.model else "no model loaded · F5 models"

    @property
    def progress(self) -> Progress | None:
        """The bar beside the words: the load's, else a job's (not during a reply)."""
        if self.load:
            return self.load_progress
        if self.job and not self.reply:
            return self.job_progress
        return None

    @property
    def session_text(self) -> str:
        return f"session: {self.session}" if self.session else ""
