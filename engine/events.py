"""The small, frozen event objects the engine thread sends to whoever asked.

Shaped after mlx-lm's ``GenerationResponse``: plain data, cheap to create, safe to hand
across threads. A request's stream ends with exactly one *final* event: ``ModelLoaded``,
``TurnDone``, ``Result`` or ``Error``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from common.progress import LoadProgress

if TYPE_CHECKING:
    from .adapter_state import AdapterState
    from .speculative import DecodingSettings


@dataclass(frozen=True, slots=True)
class WorldInfo:
    """Distributed mode (issue 14, engine/distributed.py): the ranks one model is split over.

    ``hosts[r]`` is rank r's host name; ``layers[r]`` the (first, end) layer range rank r runs
    (pipeline; every rank runs every layer under tensor parallelism); ``weight_bytes[r]`` the
    weights rank r holds after the split; ``load_peak_bytes[r]`` its peak while loading.
    """

    size: int
    backend: str  # ring | jaccl | nccl | mpi
    shard: str  # tensor | pipeline
    hosts: tuple[str, ...] = ()
    layers: tuple[tuple[int, int], ...] = ()
    weight_bytes: tuple[int, ...] = ()
    load_peak_bytes: tuple[int, ...] = ()  # rank r's peak MLX memory while it loaded

    def line(self) -> str:
        """One line for people: "2 ranks, ring, tensor split"."""
        return f"{self.size} ranks, {self.backend}, {self.shard} split"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    path: str
    architecture: str
    num_parameters: int
    bits_per_weight: float
    weight_bytes: int
    context_length: int
    load_time_s: float
    is_demo: bool = False
    adapter: str | None = None
    world: WorldInfo | None = None  # distributed mode only (issue 14): the ranks and split
    # The tokenizer has reasoning markers (mlx-lm's ``has_thinking``: a reasoning model),
    # and the chat template takes the ``enable_thinking`` switch; ``tool_calls``: it has
    # tool-call markers and a parser for them (mlx-lm's ``has_tool_calling``).
    reasoning: bool = False
    thinking_switch: bool = False
    tool_calls: bool = False
    # What the chosen context costs (engine/speculative.py, memory.py): the context in
    # tokens (--max-kv-size or the model's), its KV cache in bytes at the KV settings, the
    # KV quantization ("" = full precision, else e.g. "8-bit"), and the draft model's name.
    context_tokens: int = 0
    kv_context_bytes: int = 0
    kv_label: str = ""
    draft: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ModelLoaded:
    info: ModelInfo

    def payload(self) -> ModelInfo:
        return self.info


@dataclass(frozen=True, slots=True)
class PrefillProgress:
    """Prompt tokens evaluated so far out of those that were not in the cache."""

    done: int
    total: int


@dataclass(frozen=True, slots=True)
class TokenText:
    """A piece of reply text (one or more tokens' worth) with the running decode rate.

    ``kind`` is "answer", "reasoning" for the text of a reasoning block (``<think>`` or the
    tokenizer's own markers), or "tool" for the text of a tool call; markers removed
    (engine/text_state.py; ``TurnDone.text`` keeps the reply as the model wrote it)."""

    text: str
    generated: int
    decode_tps: float
    kind: str = "answer"
    # Speculative decoding (engine/speculative.py): tokens of the reply so far that came
    # from the draft (a draft model or prompt lookup); 0 without one.
    from_draft: int = 0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability and the ``top`` alternatives
    ``(token id, text, logprob)``, most likely first (asked for with ``logprobs=K``).
    ``entropy`` is of the whole distribution the token was drawn from, in nats. The values
    are mlx-lm's ``GenerationResponse.logprobs`` (after logits processors)."""

    index: int  # position in the reply (0 = its first generated token)
    token: int
    text: str
    logprob: float
    entropy: float
    top: tuple[tuple[int, str, float], ...] = ()
    eos: bool = False  # the end-of-sequence token that ended the reply (not in its text)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.token, "text": self.text,
                "logprob": self.logprob, "entropy": self.entropy, "eos": self.eos,
                "top": [{"id": i, "text": t, "logprob": lp} for i, t, lp in self.top]}


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """Bytes. ``device_total`` is the GPU's (Metal/CUDA) or the system's memory."""

    mlx_active: int
    mlx_peak: int
    mlx_cache: int
    process_rss: int
    system_available: int
    system_total: int
    device_total: int
    weight_bytes: int
    kv_bytes: int
    # What a model load can count on now (the GPU's free memory on CUDA, else the system's):
    # read on the engine thread, so a UI needs no MLX call of its own to judge a fit.
    load_available: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Memory:
    reading: MemoryReading


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the user should know that is not an error (e.g. a reply cut by the context)."""

    message: str


@dataclass(frozen=True, slots=True)
class TurnStats:
    prompt_tokens: int
    reused_tokens: int
    prefill_tokens: int
    prefill_tps: float
    ttft_s: float
    decode_tps: float
    generated_tokens: int
    finish_reason: str  # stop | length | context | cancelled
    peak_memory: int
    kv_bytes: int
    context_tokens: int = 0  # tokens held in the cache after the turn
    # The adapter that produced this reply: its name (None = the base model), its scale as a
    # multiple of the trained scale (None for the base model) and its identity (the cache
    # key as text, "" for the base model; see EngineCore.adapter_identity).
    adapter: str | None = None
    scale: float | None = None
    adapter_identity: str = ""
    # Set on the first turn after an adapter swap: the swap's latency, and how many tokens
    # that were cached under the previous choice had to be prefilled again under this one.
    swap_ms: float | None = None
    reprefill_tokens: int = 0
    # Distributed mode only (issue 14): the mean time per generated token spent in the
    # per-token sync collective (its latency plus waiting for the slowest rank), and each
    # rank's peak MLX memory during the turn.
    comm_ms_per_token: float | None = None
    rank_peak_memory: tuple[int, ...] = ()
    # What the cache held before the turn and, when less of it was reused, why (one line;
    # see engine/cache_miss.py).
    cached_before: int = 0
    cache_miss: str = ""
    # Branches: what came from (or went to) the caches kept for other branches, in words.
    reuse_note: str = ""
    # Reasoning models: tokens and seconds spent inside the <think> block (0: none).
    reasoning_tokens: int = 0
    reasoning_s: float = 0.0
    # Tokens the reply was made to start with (a branch "continued with this token").
    forced_tokens: int = 0
    # Faster decoding (engine/speculative.py). ``decoder``: "" (plain), "draft NAME" or
    # "prompt lookup"; ``draft_tokens`` of the reply came from the draft, of
    # ``draft_proposed`` proposed (for a draft model: steps x num_draft_tokens);
    # ``acceptance_rate`` = draft_tokens / draft_proposed; ``effective_tps``: the reply's
    # tokens per second of decoding, drafting included. ``kv_cache``: the KV quantization
    # the cache was written with ("" = full precision; ``KVSettings.identity``).
    decoder: str = ""
    draft_tokens: int = 0
    draft_proposed: int = 0
    acceptance_rate: float | None = None
    effective_tps: float | None = None
    kv_cache: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the reply made, read by the tokenizer's ``tool_parser`` (mlx-lm's).
    ``text`` is the call as written between the markers; ``name`` is "" when the parser
    could not read it (e.g. the reply was cut off inside the call)."""

    name: str
    arguments: Any
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "text": self.text}


@dataclass(frozen=True, slots=True)
class TurnDone:
    text: str
    stats: TurnStats
    tool_calls: tuple[ToolCall, ...] = ()  # in the order the reply made them

    def payload(self) -> TurnDone:
        return self


@dataclass(frozen=True, slots=True)
class Result:
    """The return value of a function run on the engine thread with ``Engine.submit``."""

    value: Any = None

    def payload(self) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class Error:
    """One line for the user: what is wrong and what to do. ``kind`` is for code."""

    message: str
    kind: str = "error"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelChanged:
    """Broadcast to ``Engine.subscribe`` listeners: the loaded model is now ``info`` (None: no
    model is loaded, e.g. after a failed load dropped the old one)."""

    info: ModelInfo | None


@dataclass(frozen=True, slots=True)
class AdapterChanged:
    """Broadcast to ``Engine.subscribe`` listeners whenever the active adapter or its scale
    changes, whoever asked (a swap, a resumed session, a model load). ``state`` is an
    ``engine.adapter_swap.AdapterState``; ``swapped`` is False when a load set it."""

    state: Any
    swapped: bool = True


@dataclass(frozen=True, slots=True)
class EngineState:
    """What an engine holds now, as one frozen snapshot (``EngineAPI.state``): the faces read
    it from any thread instead of reaching into the engine, and a snapshot never changes
    under its reader. The engine replaces it whole after every change it makes.

    ``info``: the loaded model (None: none yet, or a failed load dropped it); ``adapter``: the
    active adapter (its ``info`` None = the base model) once a model is loaded; ``decoding``:
    the last decoding settings asked for; ``adapter_mode``: auto | fused | unfused;
    ``draft_wanted``: the draft model loaded after each model load (None: no draft);
    ``busy``: a request is running or queued when the snapshot was taken.
    """

    info: ModelInfo | None
    adapter: AdapterState | None
    decoding: DecodingSettings
    adapter_mode: str = "unfused"
    draft_wanted: str | None = None
    busy: bool = False


Event = (
    LoadProgress | ModelLoaded | PrefillProgress | TokenText | Memory | Notice | TurnDone
    | Result | Error
)
StateEvent = ModelChanged | AdapterChanged
FINAL_EVENTS = (ModelLoaded, TurnDone, Result, Error)
