"""The sidebar's live panes: throughput, memory and the model.

Engine events arrive far faster than a person can read (hundreds of tokens a second), so
the panes only *record* the latest values when told (``record_*``, a few attribute
assignments) and repaint on ``tick`` when something changed: from the sidebar's 10 Hz timer
when no reply streams, from the paced streamer's frames while one does. The decode-rate
sparkline gets a point per 100 ms of decoding, however rarely it is painted.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Digits, Label, Sparkline, Static

from common.formats import fmt_bytes, gb

from ...formatting import seconds

if TYPE_CHECKING:
    from engine import MemoryReading, ModelInfo, TurnStats
    from engine.events import WorldInfo

SPARK_SAMPLES = 48
SAMPLE_S = 0.1  # one sparkline point per 100 ms of decoding


def count(n: float) -> str:
    """A parameter count, short: 3.4 M, 1.2 B."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"


class Gauge(Widget):
    """One line: a label, a bar for ``value`` out of ``total``, and a text value."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "gauge--label", "gauge--fill", "gauge--empty", "gauge--value",
    }
    DEFAULT_CSS = """
    Gauge { height: 1; }
    Gauge > .gauge--label { color: $text-muted; }
    Gauge > .gauge--fill { color: $primary; }
    Gauge > .gauge--empty { color: $panel-lighten-2; }
    Gauge > .gauge--value { color: $text; }
    Gauge.-high > .gauge--fill { color: $warning; }
    """
    LABEL_WIDTH = 9
    VALUE_WIDTH = 13

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.value = 0.0
        self.total = 0.0
        self.text = "–"

    def set(self, value: float, total: float, text: str, high: float = 0.9) -> None:
        if (value, total, text) == (self.value, self.total, self.text):
            return
        self.value, self.total, self.text = value, total, text
        self.set_class(total > 0 and value / total >= high, "-high")
        self.refresh()

    def render(self) -> Text:
        width = self.size.width
        label = self.label[: self.LABEL_WIDTH].ljust(self.LABEL_WIDTH)
        value = self.text[: self.VALUE_WIDTH].rjust(self.VALUE_WIDTH)
        bar = max(0, width - len(label) - len(value) - 1)
        frac = min(max(self.value / self.total, 0.0), 1.0) if self.total > 0 else 0.0
        half_cells = round(frac * bar * 2)
        if frac > 0 and bar:
            half_cells = max(half_cells, 1)  # something there shows, however small
        full, half = divmod(half_cells, 2)
        fill = "━" * full + ("╸" if half else "")
        empty = "━" * (bar - len(fill))
        style = self.get_component_rich_style
        return Text.assemble(
            (label, style("gauge--label")),
            (fill, style("gauge--fill")),
            (empty, style("gauge--empty")),
            " ",
            (value, style("gauge--value")),
            no_wrap=True,
        )


class Pane(Vertical):
    """A titled box in the sidebar that repaints only when its values changed."""

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pane")
        self.border_title = title
        self.dirty = True
        self.frozen = False

    def tick(self) -> None:
        if self.dirty and not self.frozen:
            self.dirty = False
            self.repaint()

    def repaint(self) -> None:  # pragma: no cover - every pane overrides it
        raise NotImplementedError


class ThroughputPane(Pane):
    """Decode tokens/s (big), its recent history, time to first token, prefill, cache reuse."""

    def __init__(self) -> None:
        super().__init__("Throughput", id="throughput")
        self.streaming = False
        self.decode_tps = 0.0
        self.generated = 0
        self.ttft_s: float | None = None
        self.prefill_done = 0
        self.prefill_total = 0
        self.prefill_tps: float | None = None
        self.prompt_tokens: int | None = None
        self.reused_tokens: int | None = None
        self.cache_miss = ""  # why the last turn reused less than the cache held
        self.samples: deque[float] = deque([0.0] * SPARK_SAMPLES, maxlen=SPARK_SAMPLES)
        self._last_sample = (0.0, 0)  # (time, generated) at the last sparkline sample
        self._started = 0.0

    def compose(self) -> ComposeResult:
        yield Digits("0.0", id="decode-rate")
        yield Label("tok/s decode", id="decode-label")
        yield Sparkline(list(self.samples), id="rate-spark", summary_function=max)
        yield Gauge("prefill", id="prefill-gauge")
        yield Static("", id="throughput-facts", markup=False)
        yield Static("", id="cache-miss", markup=False)

    # -- recording (cheap: called for every batch of events) ------------------------------
    def record_start(self) -> None:
        """A reply was sent: clear the per-turn numbers."""
        self.streaming = True
        self._started = time.perf_counter()
        self.decode_tps, self.generated, self.ttft_s = 0.0, 0, None
        self.prefill_done = self.prefill_total = 0
        self.prefill_tps = self.prompt_tokens = self.reused_tokens = None
        self.cache_miss = ""
        self._last_sample = (self._started, 0)
        self.dirty = True

    def record_prefill(self, done: int, total: int) -> None:
        self.prefill_done, self.prefill_total = done, total
        self.dirty = True

    def record_tokens(self, generated: int, decode_tps: float, from_draft: int = 0) -> None:
        now = time.perf_counter()
        if self.ttft_s is None:
            self.ttft_s = now - self._started
            self._last_sample = (now, generated)
        self.generated, self.decode_tps = generated, decode_tps
        if from_draft and generated:  # speculative decoding: the draft's share, live
            self.border_subtitle = f"{100 * from_draft / generated:.0f}% from draft"
        self._sample(now)
        self.dirty = True

    def _sample(self, now: float) -> None:
        """One sparkline point per SAMPLE_S: the tokens/s since the previous point."""
        then, before = self._last_sample
        if now - then >= SAMPLE_S:
            self.samples.append((self.generated - before) / (now - then))
            self._last_sample = (now, self.generated)

    def record_done(self, stats: TurnStats) -> None:
        self.streaming = False
        self.show_stats(stats)

    def show_stats(self, stats: TurnStats) -> None:
        """The final numbers of a turn, as the engine measured them."""
        self.decode_tps = stats.decode_tps
        self.generated = stats.generated_tokens
        self.ttft_s = stats.ttft_s if stats.generated_tokens else None
        self.prefill_tps = stats.prefill_tps or None
        self.prefill_done = self.prefill_total = stats.prefill_tokens
        self.prompt_tokens = stats.prompt_tokens
        self.reused_tokens = stats.reused_tokens
        self.cache_miss = stats.cache_miss
        if stats.comm_ms_per_token is not None:  # distributed (issue 14): sync per token
            peaks = "/".join(amount(p).replace(" ", "") for p in stats.rank_peak_memory)
            self.border_subtitle = f"sync {stats.comm_ms_per_token:.1f}ms/tok peak {peaks}"
        elif stats.decoder:  # speculative decoding (engine/speculative.py)
            rate = "" if stats.acceptance_rate is None else \
                f" {100 * stats.acceptance_rate:.0f}% accepted"
            kind = "lookup" if stats.decoder == "prompt lookup" else "draft"
            self.border_subtitle = f"{kind}{rate} · {stats.draft_tokens} drafted"
        self.dirty = True

    # -- painting (on ticks) --------------------------------------------------------------
    def repaint(self) -> None:
        self.query_one("#decode-rate", Digits).update(f"{self.decode_tps:.1f}")
        self.query_one("#rate-spark", Sparkline).data = list(self.samples)
        gauge = self.query_one("#prefill-gauge", Gauge)
        if self.prefill_total:
            gauge.set(self.prefill_done, self.prefill_total,
                      f"{self.prefill_done}/{self.prefill_total}", high=2.0)
        else:
            gauge.set(0, 0, "–")
        lines = [
            ("first token", "–" if self.ttft_s is None else seconds(self.ttft_s)),
            ("prefill", "–" if self.prefill_tps is None else f"{self.prefill_tps:.0f} tok/s"),
            ("generated", f"{self.generated} tok"),
            ("cache reuse", "–" if self.reused_tokens is None or self.prompt_tokens is None
             else f"{self.reused_tokens} reused · {self.prefill_done} new"),
        ]
        # A fixed height (app.tcss), so a repaint needs no new layout of the screen.
        self.query_one("#throughput-facts", Static).update(facts(lines), layout=False)
        self._show_miss()

    def _show_miss(self) -> None:
        """Why the cache was not reused (an edit, another branch, a new system prompt...):
        two lines at most under the facts, the whole reason in the tooltip."""
        line = self.query_one("#cache-miss", Static)
        shown = bool(self.cache_miss) and not self.streaming
        if line.display != shown:
            line.display = shown
        if shown and line.tooltip != self.cache_miss:
            width = max(self.content_size.width or 34, 20)
            line.update(miss_text(self.cache_miss, width))
            line.tooltip = self.cache_miss


def miss_text(reason: str, width: int, lines: int = 2) -> Text:
    """``cache miss: reason`` wrapped to ``width`` and cut with … after ``lines`` lines."""
    import textwrap

    wrapped = textwrap.wrap(f"cache miss: {' '.join(reason.split())}", width)
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][:width - 1].rstrip() + "…"
    text = Text("\n".join(wrapped), style="italic")
    text.stylize("bold", 0, len("cache miss:"))
    return text


def facts(lines: list[tuple[str, str]]) -> Text:
    """Label/value rows, the labels muted, for a narrow pane."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (name, value) in enumerate(lines):
        if i:
            text.append("\n")
        text.append(f"{name:<12}", style="dim")
        text.append(value)
    return text


class MemoryPane(Pane):
    """MLX active and peak memory, weights, KV cache, and system memory left."""

    def __init__(self) -> None:
        super().__init__("Memory", id="memory")
        self.reading: MemoryReading | None = None

    def compose(self) -> ComposeResult:
        yield Gauge("active", id="mem-active")
        yield Gauge("peak", id="mem-peak")
        yield Gauge("weights", id="mem-weights")
        yield Gauge("KV cache", id="mem-kv")
        yield Gauge("sys free", id="mem-system")

    def record(self, reading: MemoryReading) -> None:
        self.reading = reading
        self.dirty = True

    def repaint(self) -> None:
        r = self.reading
        if r is None:
            return
        total = r.device_total or r.system_total
        for name, value in (("active", r.mlx_active), ("peak", r.mlx_peak),
                            ("weights", r.weight_bytes), ("kv", r.kv_bytes)):
            self.query_one(f"#mem-{name}", Gauge).set(value, total, share(value, total))
        used = r.system_total - r.system_available
        self.query_one("#mem-system", Gauge).set(
            r.system_available, r.system_total, f"{gb(r.system_available)} free",
            high=2.0)
        self.query_one("#mem-system", Gauge).set_class(used / max(r.system_total, 1) > 0.9,
                                                       "-high")
        kind = "system" if total == r.system_total else "device"
        self.border_subtitle = f"bars: share of {gb(total)} {kind}"


def amount(n: float) -> str:
    """Memory for the gauges: 1.2 GB, 340 MB, and KB or bytes below a megabyte."""
    return gb(n) if n >= 1e6 else fmt_bytes(n)


def share(n: float, total: float) -> str:
    """A gauge's value: the amount and its share of ``total`` (``<1%`` for a small model,
    whose bars would otherwise all look empty)."""
    if not total or n <= 0:
        return amount(n)
    percent = 100 * n / total
    return f"{amount(n)} {'<1' if percent < 1 else f'{percent:.0f}'}%"


class ModelPane(Pane):
    """Name, architecture, size, bits per weight, and context used against its length."""

    def __init__(self) -> None:
        super().__init__("Model", id="model")
        self.info: ModelInfo | None = None
        self.status = "starting…"
        self.context_used = 0

    def compose(self) -> ComposeResult:
        yield Static("", id="model-facts", markup=False)
        yield Gauge("context", id="context-gauge")

    def record_info(self, info: ModelInfo | None, status: str = "") -> None:
        self.info = info
        self.status = status
        self.dirty = True

    def record_context(self, tokens: int) -> None:
        self.context_used = tokens
        self.dirty = True

    def repaint(self) -> None:
        info = self.info
        gauge = self.query_one("#context-gauge", Gauge)
        if info is None:
            self.query_one("#model-facts", Static).update(self.status)
            gauge.set(0, 0, "–")
            return
        name = Text(info.name, style="bold", no_wrap=True, overflow="ellipsis")
        if info.is_demo:
            name.append("  demo", style="italic dim")
        rows = [
            ("arch", info.architecture),
            ("parameters", count(info.num_parameters)),
            ("bits/weight", f"{info.bits_per_weight:g}"),
        ]
        if info.adapter:
            rows.append(("adapter", info.adapter.rstrip("/").rsplit("/", 1)[-1]))
        if info.world is not None:  # distributed (issue 14): the ranks and the split
            rows.extend(world_rows(info.world))
        if info.kv_context_bytes:  # what the chosen context will cost, before it is reached
            rows.append(("context", f"{info.context_tokens} tok: KV "
                         f"{amount(info.kv_context_bytes)}"
                         + (f" ({info.kv_label})" if info.kv_label else "")))
        if info.draft:
            rows.append(("draft", info.draft))
        self.query_one("#model-facts", Static).update(Text("\n").join([name, facts(rows)]))
        limit = info.context_length
        gauge.set(self.context_used, limit, f"{self.context_used}/{limit}" if limit else
                  f"{self.context_used}")


def world_rows(world: WorldInfo) -> list[tuple[str, str]]:
    """The model pane's rows for a model split over ranks (distributed mode, issue 14)."""
    hosts: dict[str, int] = {}
    for host in world.hosts:
        hosts[host] = hosts.get(host, 0) + 1
    split = world.shard
    if world.shard == "pipeline" and world.layers:
        split += " " + "+".join(str(end - first) for first, end in reversed(world.layers))
    rows = [("world", f"{world.size} ranks, {world.backend}"), ("split", split),
            ("hosts", ", ".join(h if n == 1 else f"{h} x{n}" for h, n in hosts.items()))]
    if world.weight_bytes:
        rows.append(("per rank", "/".join(amount(b) for b in world.weight_bytes)))
    return rows
