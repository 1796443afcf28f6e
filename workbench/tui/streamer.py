"""The one paced streamer: every view that shows a reply as it is written goes through it.

The engine thread appends events to the request's stream and never waits; the UI thread
takes them on its own clock, once per frame: ``stream.drain()`` hands over everything that
arrived since the last frame, the reply's new pieces are queued on its turn widget
(``AssistantTurn.write``: no string is rebuilt per token) and given to the Markdown stream
in one append (``flush``). How long a frame lasts is the ``FramePacer``'s call
(``widgets/pacer.py``): longer when painting costs the UI thread more than its share of the
interpreter, so a fast model is never slowed down by its own display. Between frames the
streamer only looks whether the stream has ended (a flag), so the last words show at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine import TokenLogprob, TokenText
from engine.stream import Handlers, dispatch, unwrap

from .widgets.pacer import FASTEST_S, FramePacer

if TYPE_CHECKING:
    from engine import EventStream, TurnDone

    from .widgets.chat import AssistantTurn

CHECK_S = FASTEST_S  # how often the end of the stream is looked for between frames


class PacedStreamer:
    def __init__(self, pacer: FramePacer | None = None) -> None:
        self.pacer = pacer or FramePacer()
        self.frames = 0  # frames painted by the last ``run``

    async def run(self, stream: EventStream[TurnDone], turn: AssistantTurn, *,
                  handlers: Handlers | None = None,
                  on_frame: Callable[[TokenText | None], Any] | None = None) -> TurnDone:
        """Show ``stream``'s reply in ``turn`` until it ends; return its ``TurnDone`` or raise
        ``EngineError``. ``handlers`` get every other event by type (prefill progress,
        memory, notices); ``on_frame`` is called once per frame with the frame's last
        ``TokenText`` (None when no text came), before the screen is painted. If the
        awaiting task is cancelled (the screen or the app is closing), the request is too.
        """
        handlers = handlers or {}
        pacer = self.pacer
        pacer.start()
        self.frames = 0
        final: Any = None
        ended = False
        decode_tps = 0.0
        try:
            while not ended:
                due = time.perf_counter() + pacer.interval
                while not stream.done and time.perf_counter() < due:
                    await asyncio.sleep(min(CHECK_S, max(0.0, due - time.perf_counter())))
                events, ended = stream.drain()
                if ended:
                    final = events.pop()
                token: TokenText | None = None
                for event in events:
                    if isinstance(event, TokenText):
                        if event.kind == "reasoning":
                            turn.think(event.text, event.generated)
                        else:
                            turn.write(event.text)
                        token = event
                    elif isinstance(event, TokenLogprob):
                        turn.record_token(event)  # asked for: the probability view is on
                    else:
                        dispatch(handlers, event)
                if on_frame is not None:
                    on_frame(token)
                await turn.flush()
                self.frames += 1
                if token is not None:
                    decode_tps = token.decode_tps
                pacer.measure(decode_tps)
        finally:
            if not ended:
                stream.cancel()
        done: TurnDone = unwrap(final)
        return done
