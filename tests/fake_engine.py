"""A scripted stand-in for ``engine.Engine``: the same ``EngineAPI``, no MLX, no model.

``FakeEngine`` has a thread of its own that serves requests in order from a queue, so its
streams behave like the real ones (events arrive asynchronously; ``cancel()`` stops the
running request and cancels the queued ones; ``close()`` stops the thread). What the model
would do is scripted instead::

    fake = FakeEngine(adapters=[fake_adapter("tone-a")], tokens_per_s=200)
    fake.script("Hello there.", "Second reply.")  # the next replies, in order
    fake.reply = lambda messages: messages[-1]["content"].upper()  # when the script is empty
    fake.fail_next_turn("out of memory", kind="internal")
    app = WorkbenchApp(args, engine=fake)

"Tokens" are words: a reply streams one ``TokenText`` per word (its trailing space
included), and a prompt is the words of all the messages, so prefix reuse across turns
counts like the real cache's. Timing stats are derived from the counts (deterministic), and
memory readings from the loaded model's weights and the active cache.

Models: a bare name (``"fake-model"``: no ``/``, not a path) is a scripted model with no
files. Any other spec is found the way ``Engine.load`` finds it, with the real
``models.resolve.resolve_model`` (no MLX there): a folder must exist and look like a model,
a repo id comes from the Hugging Face cache or is downloaded, and their errors are the real
ones; the "loaded" model then carries that folder's path, name, weight size, context and
demo mark, while its replies stay scripted.

Adapters: ``list_adapters(dirs, extra_paths)`` lists the configured adapters whose folder is
in one of ``dirs`` (sorted by name within each), then each of ``extra_paths`` not listed yet,
as ``discover_adapters`` does; ``use_adapter`` takes any configured adapter by its path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from common.errors import AdapterError, ContextOverflow, EngineError, NoModel, WorkbenchError
from engine import (
    AdapterChanged,
    AdapterInfo,
    AdapterState,
    EngineState,
    EventStream,
    LoadProgress,
    Memory,
    MemoryReading,
    ModelChanged,
    ModelInfo,
    ModelLoaded,
    Notice,
    PrefillProgress,
    SamplingParams,
    TokenLogprob,
    TokenText,
    TurnDone,
    TurnOptions,
    TurnStats,
)
from engine.adapter_fuse import check_mode
from engine.adapter_swap import AdapterKey, check_scale
from engine.protocol import AdapterSwap, StateHolder
from engine.reasoning import ReasoningSplitter
from engine.requests import RequestThread
from engine.speculative import DecodingSettings
from models.demo import is_demo_model
from models.fit import model_context_length
from models.resolve import display_name, resolve_model

T = TypeVar("T")
Emit = Callable[[Any], None]
Listener = Callable[[Any], None]
GB = 1 << 30
PREFILL_TPS = 2000.0  # reported prefill rate; ttft_s = prefill tokens / this
DEFAULT_DECODE_TPS = 1000.0  # reported decode rate when tokens_per_s is 0 (no pacing)
KV_BYTES_PER_TOKEN = 1024
FAKE_MEMORY = MemoryReading(
    mlx_active=1 * GB, mlx_peak=2 * GB, mlx_cache=GB // 4, process_rss=GB // 2,
    system_available=12 * GB, system_total=16 * GB, device_total=16 * GB,
    weight_bytes=GB, kv_bytes=GB // 64, load_available=12 * GB)
DEFAULT_REPLY = "Hello from the fake engine."
_WORD = re.compile(r"\s*\S+\s*|\s+")


def words(text: str) -> list[str]:
    """The "tokens" of a text: its words (pieces that join back to the text)."""
    return _WORD.findall(text)


def fake_adapter(name: str, path: str | None = None, *, reason: str = "", rank: int = 8,
                 scale: float = 20.0, fine_tune_type: str = "lora", num_layers: int = 4,
                 **fields: Any) -> AdapterInfo:
    """An ``AdapterInfo`` as ``inspect_adapter`` would give for a folder that does not exist:
    valid unless ``reason`` says why not. ``path`` defaults to ``/fake/adapters/NAME`` (so
    ``list_adapters(["/fake/adapters"])`` finds it); ``fields`` override the rest (``layers``:
    which layers it adapts, for ``LoRA r4 · layers 2-3``)."""
    config = {"fine_tune_type": fine_tune_type, "num_layers": num_layers,
              "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0}}
    values: dict[str, Any] = dict(
        path=path or f"/fake/adapters/{name}", name=name, valid=not reason, reason=reason,
        fine_tune_type=fine_tune_type, rank=rank, scale=float(scale), num_layers=num_layers,
        layers=tuple(range(num_layers)), num_tensors=4 * num_layers,
        num_parameters=num_layers * 4 * rank * 1024, size_bytes=num_layers * 8 * rank * 1024,
        config=config)
    values.update(fields)
    return AdapterInfo(**values)


@dataclass(frozen=True)
class ChatRequest:
    """One ``chat`` call as the fake received it (``FakeEngine.chats``)."""

    messages: list[dict[str, str]]
    params: SamplingParams
    ignore_eos: bool = False
    options: TurnOptions = field(default_factory=TurnOptions)


@dataclass
class FakeCore:
    """What ``submit``'s functions get instead of an ``EngineCore``: no model, no MLX, so
    code that needs one refuses cleanly (``require`` raises ``NoModel``)."""

    info: ModelInfo | None = None
    loaded: Any = None
    notes: list[Any] = field(default_factory=list)  # free for a test's own bookkeeping

    def require(self) -> Any:
        raise NoModel("no model is loaded yet (fake engine: no MLX here)")

    def adapter_identity(self) -> str:
        return ""

    def kv_identity(self) -> str:
        return ""

    def reset_cache(self) -> None:
        pass


def _common_prefix(a: list[str], b: list[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


class FakeEngine(RequestThread, StateHolder):
    """``EngineAPI`` with scripted replies; see the module docstring. Every knob is a plain
    attribute a test may change between requests. Its thread, queue, cancel and errors are
    the real engine's own (``engine.requests.RequestThread``)."""

    def __init__(self, *, reply: str | Callable[[list[dict[str, str]]], str] = DEFAULT_REPLY,
                 replies: Iterable[str] = (), tokens_per_s: float = 0.0,
                 adapters: Iterable[AdapterInfo | str] = (), missing: Iterable[str] = (),
                 is_demo: bool = False, context_length: int = 4096, memory_every: int = 8,
                 model_facts: Mapping[str, Any] | None = None,
                 memory_reading: MemoryReading = FAKE_MEMORY,
                 adapter_mode: str = "unfused") -> None:
        self.reply = reply  # the reply once the script is empty: text or f(messages)
        self.replies: deque[str] = deque(replies)  # scripted replies, used first, in order
        self.tokens_per_s = tokens_per_s  # pace of TokenText events (0 = as fast as possible)
        self.adapters = [a if isinstance(a, AdapterInfo) else fake_adapter(a) for a in adapters]
        # spec -> (message, kind): a load of it ends in that Error (the old model stays)
        self.load_failures: dict[str, tuple[str, str]] = {}
        for spec in missing:
            self.fail_load(spec)
        self.is_demo = is_demo  # ModelInfo.is_demo of the scripted models (a folder: its mark)
        self.context_length = context_length  # the scripted models' context (tokens = words)
        self.memory_every = memory_every  # a Memory event every N tokens (0 = only at the end)
        self.model_facts = dict(model_facts or {})  # ModelInfo fields to override
        self._vocab: dict[str, int] = {}  # word -> its fake token id (see token_id)
        # The system's side of every reading; weights and KV come from the model and cache.
        self.memory_reading = memory_reading
        # The adapter mode setting (auto | fused | unfused): the fake runs adapters fused only
        # when asked for "fused" (auto behaves as on a machine where the copy does not fit).
        self.adapter_mode = adapter_mode
        # What the fake holds, as the real engine's: info, adapter, decoding, draft_wanted.
        self._hold(EngineState(None, None, DecodingSettings(), adapter_mode))
        self.chats: list[ChatRequest] = []  # every chat request, in order
        self.paused = threading.Event()  # set while a turn waits at pause_after's point
        self._pause_at: int | None = None
        self._release = threading.Event()
        self._fail_next: EngineError | None = None
        # The fake's "core" (engine-thread state): model, adapter, caches by identity.
        self._model: ModelInfo | None = None
        self._active: AdapterInfo | None = None
        self._scale: float | None = None
        self._prepared: list[str] = []
        self._caches: dict[str, list[str]] = {}
        self._pending_swap: tuple[float, list[str]] | None = None
        self._core = FakeCore()
        self._listeners: list[Listener] = []
        super().__init__("fake-engine")

    # -- scripting -----------------------------------------------------------------------
    def script(self, *texts: str) -> None:
        """Queue the next replies, in order."""
        self.replies.extend(texts)

    def fail_next_turn(self, message: str = "the fake engine failed", kind: str = "internal"
                       ) -> None:
        """The next ``chat`` ends in ``Error(message, kind)`` (once)."""
        self._fail_next = EngineError(message, kind)

    def fail_load(self, spec: str, message: str | None = None, kind: str = "model-not-found"
                  ) -> None:
        """Every ``load(spec)`` ends in ``Error`` after the resolve stage."""
        self.load_failures[spec] = (message or f"no model found for {spec!r}: give a model "
                                    "folder or a Hugging Face repo id", kind)

    def pause_after(self, tokens: int) -> None:
        """The next turn stops after ``tokens`` pieces, sets ``paused`` and waits for
        ``release()`` or a cancel (a deterministic point to cancel at)."""
        self._release.clear()
        self._pause_at = tokens

    def release(self) -> None:
        self._release.set()

    # -- listeners -----------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """As ``Engine.subscribe``: ``listener`` hears ModelChanged/AdapterChanged on the
        fake's thread; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners \
            else None

    def _broadcast(self, event: Any) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - as the real engine: a listener's bug is its own
                pass

    def _announce(self, *, swapped: bool = True) -> None:
        if self._model != self.info:
            self._set_state(info=self._model)
            self._broadcast(ModelChanged(self._model))
        adapter = self._adapter_state() if self._model is not None else None
        self._set_state(adapter=adapter, adapter_mode=self.adapter_mode)
        if adapter is not None:
            self._broadcast(AdapterChanged(adapter, swapped))

    # -- requests (as Engine) ------------------------------------------------------------
    def submit(self, fn: Callable[[Any, Emit, threading.Event], T]) -> EventStream[T]:
        """Run ``fn(core, emit, cancel)`` on the fake's thread with a ``FakeCore``."""
        return self._submit(lambda emit, cancel: fn(self._core, emit, cancel), wrap=True)

    def run_mlx(self, fn: Callable[[Emit, threading.Event], T]) -> EventStream[T]:
        """As ``Engine.run_mlx``: ``fn(emit, cancel)`` on the fake's thread."""
        return self._submit(fn, wrap=True)

    def with_cache(self, fn: Callable[[Any, Emit, threading.Event], T]) -> EventStream[T]:
        """As ``Engine.with_cache``: ``fn`` gets the ``FakeCore`` (no model: it refuses)."""
        return self.submit(fn)

    def load(self, model: str, adapter: str | None = None) -> EventStream[ModelInfo]:
        def job(emit: Emit, cancel: threading.Event) -> ModelLoaded:
            try:
                return ModelLoaded(self._load(model, adapter, emit, cancel))
            finally:
                self._set_state(info=None)  # a reload of the same model is a change too
                self._announce(swapped=False)
        return self._submit(job, wrap=False)

    def chat(self, messages: Iterable[Mapping[str, str]], params: SamplingParams | None = None,
             *, ignore_eos: bool = False, options: TurnOptions | None = None
             ) -> EventStream[TurnDone]:
        msgs = [dict(m) for m in messages]
        params = params or SamplingParams()
        options = options or TurnOptions(ignore_eos=ignore_eos)
        self.chats.append(ChatRequest(msgs, params, options.ignore_eos, options))
        return self._submit(lambda emit, cancel: self._turn(msgs, params, options, emit,
                                                            cancel), wrap=False)

    # -- "token ids": each distinct word gets one, so logprobs and forced starts have ids --
    def token_id(self, word: str) -> int:
        return self._vocab.setdefault(word, len(self._vocab) + 1)

    def token_text(self, token: int) -> str:
        for word, i in self._vocab.items():
            if i == token:
                return word
        return ""

    def _logprob(self, index: int, piece: str, k: int) -> TokenLogprob:
        """Scripted probabilities: every third token is unsure; the alternatives are fixed
        words ("maybe ", "perhaps "), so a test knows what it may pick."""
        chosen = -1.6 if index % 3 == 2 else -0.05
        top = sorted([(self.token_id(piece), piece, chosen),
                      (self.token_id("maybe "), "maybe ", -1.2),
                      (self.token_id("perhaps "), "perhaps ", -2.5)], key=lambda t: -t[2])[:k]
        return TokenLogprob(index=index, token=self.token_id(piece), text=piece,
                            logprob=chosen, entropy=1.5 if index % 3 == 2 else 0.2,
                            top=tuple(top))

    # -- faster decoding (engine/speculative.py): recorded, no numerics ------------------
    def load_draft(self, model: str | None) -> EventStream[ModelInfo | None]:
        def job(_emit: Emit, _cancel: threading.Event) -> ModelInfo | None:
            self._set_state(draft_wanted=model)
            if self._model is not None:
                self._model = replace(self._model, draft=Path(model).name if model else None)
                self._announce(swapped=False)
            return self.info
        return self._submit(job, wrap=True)

    def set_decoding(self, settings: DecodingSettings) -> EventStream[DecodingSettings]:
        self._set_state(decoding=settings)  # as Engine: the last settings asked for
        return self._submit(lambda _e, _c: settings, wrap=True)

    def _adapter_job(self, change: Callable[[], AdapterState]) -> EventStream[AdapterState]:
        def job(_emit: Emit, _cancel: threading.Event) -> AdapterState:
            state = change()
            self._announce()
            return state
        return self._submit(job, wrap=True)

    def use_adapter(self, path: str | Path | None, scale: float | None = None
                    ) -> EventStream[AdapterState]:
        return self._adapter_job(lambda: self._activate(path, scale))

    def set_adapter_scale(self, scale: float) -> EventStream[AdapterState]:
        return self._adapter_job(lambda: self._set_scale(scale))

    def set_adapter_mode(self, mode: str) -> EventStream[AdapterState]:
        """As ``Engine.set_adapter_mode`` (the fake runs fused only for "fused")."""
        def change() -> AdapterState:
            self._require()
            old, self.adapter_mode = self._identity(), check_mode(mode)
            self._switch(old)
            return self._adapter_state(swap_ms=0.5)
        return self._adapter_job(change)

    def with_adapter_swaps(self, fn: Callable[[Any, AdapterSwap, Emit, threading.Event], T]
                           ) -> EventStream[T]:
        """As ``Engine.with_adapter_swaps``: ``fn`` gets a ``FakeCore``; each swap is
        announced, and the adapter active before is put back (and announced) at the end."""
        def job(emit: Emit, cancel: threading.Event) -> T:
            before = (self._active.path if self._active else None, self._scale)
            swapped = False

            def swap(path: str | None, scale: float | None) -> AdapterState:
                nonlocal swapped
                state = self._activate(path, scale)
                swapped = True
                self._announce()
                return state

            try:
                return fn(self._core, swap, emit, cancel)
            finally:
                if swapped:
                    self._activate(*before)
                    self._announce()
        return self._submit(job, wrap=True)

    def list_adapters(self, dirs: Iterable[str | Path] = (),
                      extra_paths: Iterable[str | Path] = ()) -> EventStream[list[AdapterInfo]]:
        """The configured adapters whose folder is in one of ``dirs`` (sorted by name within
        each, as ``discover_adapters``), then each of ``extra_paths`` not listed yet (one that
        is not configured: invalid, no such folder). Each folder is listed once."""
        folders = [str(Path(d).expanduser()) for d in dirs]
        extras = [str(Path(p).expanduser()) for p in extra_paths]

        def job(_emit: Emit, _cancel: threading.Event) -> list[AdapterInfo]:
            paths: list[str] = []
            for folder in folders:
                inside = [a for a in self.adapters if str(Path(a.path).parent) == folder]
                paths += [a.path for a in sorted(inside, key=lambda a: Path(a.path).name.lower())]
            for extra in extras:
                found = self._find(extra)
                paths.append(found.path if found is not None else extra)
            unique = list(dict.fromkeys(str(Path(p)) for p in paths))
            return [self._check(p) for p in unique]
        return self._submit(job, wrap=True)

    def check_adapter(self, path: str | Path) -> EventStream[AdapterInfo]:
        return self._submit(lambda _e, _c: self._check(path), wrap=True)

    def adapter_state(self) -> EventStream[AdapterState]:
        return self._submit(lambda _e, _c: self._adapter_state(), wrap=True)

    def memory(self) -> EventStream[MemoryReading]:
        return self._submit(lambda _e, _c: self._reading(), wrap=True)

    def reset(self) -> EventStream[None]:
        def job(_emit: Emit, _cancel: threading.Event) -> None:
            self._caches.clear()
            self._pending_swap = None
        return self._submit(job, wrap=True)

    def close(self, timeout: float = 120.0) -> None:
        self._release.set()  # a turn held by pause_after ends (cancelled) at once
        super().close(timeout)

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def scripted(spec: str) -> bool:
        """Whether ``spec`` names a scripted model (a bare name) rather than a real folder or
        repo id to resolve."""
        return bool(spec) and "/" not in spec and "\\" not in spec \
            and not spec.startswith(("~", "."))

    def _facts(self, spec: str, cancel: threading.Event, emit: Emit) -> dict[str, Any]:
        """What the "loaded" model says about itself: scripted, or its real folder's."""
        facts: dict[str, Any] = dict(
            name=spec, path=f"/fake/models/{spec}", architecture="llama",
            num_parameters=1_000_000_000, bits_per_weight=4.5, weight_bytes=GB,
            context_length=self.context_length, load_time_s=0.01, is_demo=self.is_demo)
        if self.scripted(spec):
            return facts
        path = resolve_model(spec, emit, cancel)  # the real errors: no such folder...
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return {**facts, "name": display_name(spec, path), "path": str(path),
                "architecture": str(config.get("model_type", "?")), "weight_bytes": weights,
                "context_length": model_context_length(config) or self.context_length,
                "is_demo": is_demo_model(path)}

    def _load(self, spec: str, adapter: str | None, emit: Emit,
              cancel: threading.Event) -> ModelInfo:
        emit(LoadProgress("resolve", f"looking for {spec}"))
        if spec in self.load_failures:
            message, kind = self.load_failures[spec]
            raise EngineError(message, kind)
        facts = self._facts(spec.strip(), cancel, emit)  # a failure keeps the old model
        name = facts["name"]
        self._model = None
        self._active = self._scale = self._pending_swap = None
        self._prepared, self._caches = [], {}
        emit(LoadProgress("load", f"loading {Path(facts['path']).name} (fake, "
                          f"{facts['weight_bytes'] / GB:.1f} GB)"))
        self._model = ModelInfo(**{**facts, **self.model_facts})
        if adapter:
            # As the real engine: an adapter that cannot be used does not stop the model.
            emit(LoadProgress("load", f"preparing adapter {Path(adapter).name}"))
            try:
                self._activate(adapter, None)
            except WorkbenchError as exc:
                emit(Notice(f"{name} is loaded without the adapter {Path(adapter).name}: "
                            f"{exc}"))
            self._pending_swap = None
        emit(LoadProgress("ready", f"{name} ready in {self._model.load_time_s:.2f} s"))
        return self._model

    def _reading(self) -> MemoryReading:
        """A reading as the real engine makes: the loaded weights and the active cache's KV
        on top of the system's numbers (``memory_reading``)."""
        base = self.memory_reading
        weights = self._model.weight_bytes if self._model is not None else 0
        kv = len(self._caches.get(self._identity(), [])) * KV_BYTES_PER_TOKEN
        return replace(base, weight_bytes=weights, kv_bytes=kv, mlx_active=weights + kv,
                       mlx_peak=max(base.mlx_peak, weights + kv))

    def _require(self) -> ModelInfo:
        if self._model is None:
            raise NoModel("no model is loaded yet: wait for the load to finish, or load one "
                          "with --model")
        return self._model

    # -- adapters ------------------------------------------------------------------------
    def _find(self, path: str | Path) -> AdapterInfo | None:
        want = str(Path(path).expanduser())
        return next((a for a in self.adapters if str(Path(a.path)) == want), None)

    def _check(self, path: str | Path, against: bool = True) -> AdapterInfo:
        info = self._find(path)
        if info is None:
            return AdapterInfo(path=str(path), name=Path(path).name or str(path), valid=False,
                               reason=f"no adapter folder at {path}: give a folder that holds "
                               "adapter_config.json and adapters.safetensors")
        if against and info.valid and self._model is not None:
            info = replace(info, checked_against=self._model.name)
        return info

    def _identity(self) -> str:
        if self._active is None or self._scale is None:
            return ""
        digest = hashlib.sha256(self._active.path.encode()).hexdigest()
        return str(AdapterKey(self._active.name, digest, self._scale, self._mode()))

    def _mode(self) -> str:
        return "fused" if self.adapter_mode == "fused" else "unfused"

    def _adapter_state(self, swap_ms: float = 0.0, prepare_ms: float = 0.0) -> AdapterState:
        a, s = self._active, self._scale
        return AdapterState(
            info=a, scale=s, lora_scale=a.scale * s if a and s is not None else None,
            identity=self._identity(), swap_ms=swap_ms, prepare_ms=prepare_ms,
            cached_tokens=len(self._caches.get(self._identity(), [])),
            prepared=tuple(self._prepared),
            mode=None if a is None else self._mode(),
            adapter_mode=self.adapter_mode)

    def _switch(self, old: str) -> None:
        if self._identity() != old:
            before = self._pending_swap[1] if self._pending_swap else self._caches.get(old, [])
            self._pending_swap = (0.5, list(before))

    def _activate(self, path: str | Path | None, scale: float | None) -> AdapterState:
        model, old, prepare_ms = self._require(), self._identity(), 0.0
        if path is None:
            self._active = self._scale = None
        else:
            value = check_scale(scale)
            info = self._check(path)
            if not info.valid:
                raise AdapterError(info.reason, path=info.path)
            if info.name not in self._prepared:
                prepare_ms = 20.0
            else:
                self._prepared.remove(info.name)
            self._prepared = [*self._prepared, info.name][-4:]
            self._active, self._scale = info, value
        self._switch(old)
        self._model = replace(model, adapter=self._active.path if self._active else None)
        return self._adapter_state(swap_ms=0.5, prepare_ms=prepare_ms)

    def _set_scale(self, scale: float) -> AdapterState:
        self._require()
        if self._active is None:
            raise AdapterError("no adapter is active: choose one first, then set its scale")
        old, self._scale = self._identity(), check_scale(scale)
        self._switch(old)
        return self._adapter_state(swap_ms=0.5)

    # -- a chat turn ---------------------------------------------------------------------
    def _next_reply(self, msgs: list[dict[str, str]]) -> str:
        if self.replies:
            return self.replies.popleft()
        return self.reply(msgs) if callable(self.reply) else self.reply

    def _turn(self, msgs: list[dict[str, str]], params: SamplingParams, options: TurnOptions,
              emit: Emit, cancel: threading.Event) -> TurnDone:
        ignore_eos = options.ignore_eos
        model = self._require()
        failure, self._fail_next = self._fail_next, None
        if failure is not None:
            raise failure
        prompt = [w.strip() for m in msgs for w in words(m.get("content", "")) if w.strip()]
        limit = model.context_length or 1 << 31
        if len(prompt) >= limit:
            raise ContextOverflow(f"the conversation is {len(prompt)} tokens and the context "
                                  f"holds {limit}: start a new conversation (/reset) or "
                                  "shorten it", prompt_tokens=len(prompt), limit=limit)
        max_tokens, cut = params.max_tokens, len(prompt) + params.max_tokens > limit
        if cut:
            max_tokens = limit - len(prompt)
            emit(Notice(f"this reply can use only {max_tokens} tokens before the context "
                        f"({limit}) is full: start a new conversation for longer replies"))
        key = self._identity()
        pending, self._pending_swap = self._pending_swap, None
        cached_before = len(self._caches.get(key, []))
        reused = min(_common_prefix(self._caches.get(key, []), prompt), max(len(prompt) - 1, 0))
        self._caches[key] = prompt[:reused]
        total = len(prompt) - reused
        forced = [self.token_text(t) for t in options.reply_prefix]
        pieces = words(self._next_reply(msgs))
        source = itertools.cycle(pieces) if ignore_eos and pieces else iter(pieces)
        splitter = ReasoningSplitter()
        reasoning = 0  # tokens up to the end of a <think> block
        tps = self.tokens_per_s or DEFAULT_DECODE_TPS
        generated: list[str] = []
        finish = "cancelled" if cancel.is_set() else "stop"
        if finish == "stop":
            self._caches[key] = prompt[:-1]
            emit(PrefillProgress(total, total))
            for kind, text in splitter.feed("".join(forced)):
                emit(TokenText(text, 0, tps, kind))
        for piece in source if finish == "stop" else ():
            if self.tokens_per_s > 0:
                cancel.wait(1 / self.tokens_per_s)
            if cancel.is_set():
                finish = "cancelled"
                break
            if options.logprobs:
                emit(self._logprob(len(generated), piece, options.logprobs))
            generated.append(piece)
            was_inside = splitter.inside
            for kind, text in splitter.feed(piece):
                emit(TokenText(text, len(generated), tps, kind))
            if was_inside and not splitter.inside:  # the <think> block ended here
                reasoning = len(generated)
            if self._pause_at is not None and len(generated) >= self._pause_at:
                self._pause_at = None
                self.paused.set()
                while not (self._release.wait(0.01) or cancel.is_set()):
                    pass
                self.paused.clear()
            if self.memory_every and len(generated) % self.memory_every == 0:
                self._caches[key] = prompt + [p.strip() for p in generated if p.strip()]
                emit(Memory(self._reading()))
            if len(generated) >= max_tokens:
                finish = "context" if cut else "length"
                break
            if cancel.is_set():
                finish = "cancelled"
                break
        for kind, text in splitter.flush():
            emit(TokenText(text, len(generated), tps, kind))
        if generated:
            self._caches[key] = prompt + [p.strip() for p in generated if p.strip()]
        swap_ms, reprefill = None, 0
        if pending is not None and not generated and finish == "cancelled":
            self._pending_swap = pending  # the re-prefill is still to come
        elif pending is not None:
            swap_ms = pending[0]
            shared = min(_common_prefix(pending[1], self._caches[key]), len(prompt) - 1)
            reprefill = max(0, shared - reused)
        context = len(self._caches[key])
        prefilled = total if generated else context - reused
        emit(Memory(self._reading()))
        return TurnDone("".join(forced + generated), TurnStats(
            prompt_tokens=len(prompt), reused_tokens=reused, prefill_tokens=max(0, prefilled),
            prefill_tps=PREFILL_TPS, ttft_s=round(total / PREFILL_TPS, 6), decode_tps=tps,
            generated_tokens=len(generated), finish_reason=finish,
            peak_memory=self._reading().mlx_peak, kv_bytes=context * KV_BYTES_PER_TOKEN,
            context_tokens=context, adapter=self._active.name if self._active else None,
            scale=self._scale if self._active else None, adapter_identity=key,
            swap_ms=swap_ms, reprefill_tokens=reprefill, forced_tokens=len(forced),
            reasoning_tokens=reasoning, reasoning_s=round(reasoning / tps, 6),
            cached_before=cached_before,
            cache_miss=(f"reused {reused} of {cached_before} cached tokens: an earlier "
                        "message differs (an edit, or another branch)"
                        if reused < cached_before and reused < len(prompt) - 1 else "")))
