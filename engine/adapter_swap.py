"""Hot-swapping LoRA/DoRA adapters on a loaded model, without reloading the base weights.

mlx-lm can attach an adapter once, at load (``load_adapters``); calling it twice on one model
fails, and ``remove_lora_layers`` does not undo DoRA. So each adapter is *prepared* once: its
wrapper modules (mlx-lm's own LoRALinear/DoRALinear/..., built by ``linear_to_lora_layers``
around the shared base layers) get its weights, then the base layers are put back. A swap is
one ``model.update_modules`` call that installs a prepared set of wrappers (or the base layers
again for "no adapter"): a millisecond, quantized base included. Prepared adapters are kept in
a small least-recently-used set, so swapping back is immediate.

Everything here runs on the engine thread (it touches the model). The scale of an adapter is
a multiplier of its trained scale, from 0 to 2; the wrappers' ``scale`` is set on activation.

Each prepared adapter can also hold a *fused* module set (``engine.adapter_fuse``): copies of
only the layers it touches with the low-rank product merged in, which decode at the base
model's speed. The mode setting (auto | fused | unfused) and a memory probe decide which set
is installed; fused copies of adapters not in use are dropped first when memory is short.
K/V computed under the two sets differ numerically, so the mode is part of the cache key.

The data (``AdapterKey``, ``AdapterState``, ``PreparedAdapter``, ``check_scale``) lives in
``engine.adapter_state`` and is re-exported here; this module is the manager that prepares
adapters and installs their modules.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.errors import AdapterError
from models.resolve import location_key

from .adapter_fit import check_against_model, shape_text
from .adapter_fuse import can_fuse, check_mode, fit_note, fuse_modules, fused_nbytes
from .adapter_state import MAX_SCALE as MAX_SCALE
from .adapter_state import AdapterKey as AdapterKey
from .adapter_state import AdapterState as AdapterState
from .adapter_state import PreparedAdapter as PreparedAdapter
from .adapter_state import check_scale as check_scale
from .adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterInfo, content_digest, inspect_adapter

DEFAULT_MAX_PREPARED = 4


def _signature(path: Path) -> tuple[int, int, int, int]:
    a, b = (path / CONFIG_FILE).stat(), (path / WEIGHTS_FILE).stat()
    return (a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns)


# -- preparing and swapping -----------------------------------------------------------------

class AdapterManager:
    """The adapters prepared for one loaded model, and which one is installed.

    Lives on the engine thread with the model. ``activate`` leaves the previous adapter
    installed whenever it raises.
    """

    def __init__(self, max_prepared: int = DEFAULT_MAX_PREPARED,
                 memory_probe: Callable[[], int] | None = None, mode: str = "unfused") -> None:
        self.max_prepared = max(1, int(max_prepared))
        self.memory_probe = memory_probe  # free bytes now (None: never fuse)
        self.mode = check_mode(mode)
        self.model: Any = None
        self.model_path = ""
        self.model_name = ""
        self.base: dict[str, Any] = {}  # original module at every path any adapter wraps
        self.prepared: OrderedDict[str, PreparedAdapter] = OrderedDict()  # by folder path
        self.active: PreparedAdapter | None = None
        self.scale: float | None = None
        self.evicted: list[PreparedAdapter] = []  # dropped since the caller last looked
        self._parents: dict[str, Any] | None = None  # module by path, base layers installed

    def attach(self, model: Any, model_path: str, model_name: str = "") -> None:
        """Start over with a newly loaded model (base layers installed)."""
        self.reset()
        self.model, self.model_path, self.model_name = model, model_path, model_name
        self._parents = dict(model.named_modules())

    def reset(self) -> None:
        self.model = None
        self.model_path = self.model_name = ""
        self.base.clear()
        self.prepared.clear()
        self.active = None
        self.scale = None
        self.evicted.clear()
        self._parents = None

    # -- checks ---------------------------------------------------------------------------
    def check(self, path: str | Path) -> AdapterInfo:
        """Files plus fit to the loaded model. Never raises for a bad adapter."""
        info = inspect_adapter(path)
        if self.model is None or not info.valid:
            return info
        with self._base_installed():
            return check_against_model(info, self.model, self.model_path, self.model_name)

    @contextmanager
    def _base_installed(self) -> Iterator[None]:
        """The base layers in place for the duration (checks look at the base model)."""
        previous = self.active
        self._install(None)
        try:
            yield
        finally:
            self._install(previous)

    # -- module installation ----------------------------------------------------------------
    def _install(self, target: PreparedAdapter | None) -> None:
        """Put ``target``'s wrappers (or the base layers) in the model."""
        current = self.active
        updates: list[tuple[str, Any]] = []
        if current is not None:
            keep = target.modules if target is not None else {}
            updates += [(p, self.base[p]) for p in current.modules if p not in keep]
        if target is not None:
            updates += list(target.installed().items())
        self._set_modules(updates)
        self.active = target

    def _set_modules(self, updates: list[tuple[str, Any]]) -> None:
        """``model.update_modules`` for a list of leaf paths, without building a tree each time:
        every wrapped path's parent is a module that adapters never replace, so setting the
        child on it directly is the same update (ten times faster on a 0.5B model)."""
        from mlx.nn import Module
        from mlx.utils import tree_unflatten

        if self._parents is None:
            self._parents = dict(self.model.named_modules())
        rest = []
        for path, module in updates:
            parent_path, _, child = path.rpartition(".")
            parent = self._parents.get(parent_path) if parent_path else self.model
            if isinstance(parent, Module) and child in parent:
                parent[child] = module  # what Module.__setattr__ does for a child
            else:
                rest.append((path, module))
        if rest:
            self.model.update_modules(tree_unflatten(rest))

    def _prepare(self, info: AdapterInfo) -> PreparedAdapter:
        """Build the adapter's wrappers with mlx-lm, load its weights, put the base back."""
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten
        from mlx_lm.tuner.utils import linear_to_lora_layers

        path = Path(info.path)
        signature = _signature(path)
        digest = content_digest(path, info.config)
        try:
            weights = mx.load(str(path / WEIGHTS_FILE))
        except (RuntimeError, ValueError, OSError) as exc:
            raise AdapterError(f"{info.name}/{WEIGHTS_FILE} cannot be read "
                               f"({str(exc).strip().splitlines()[0] if str(exc) else exc}): "
                               "copy or train the adapter again") from None
        assert isinstance(weights, dict)
        previous, previous_scale = self.active, self.scale
        self._install(None)
        model = self.model
        before = dict(model.named_modules())
        modules: dict[str, Any] = {}
        try:
            params = dict(info.config["lora_parameters"])
            params["scale"] = info.scale
            linear_to_lora_layers(model, info.num_layers, params,
                                  use_dora=info.fine_tune_type == "dora")
            after = dict(model.named_modules())
            modules = {p: m for p, m in after.items() if p in before and m is not before[p]}
            allowed: dict[str, Any] = {}
            for p, m in modules.items():
                leaves: list[tuple[str, Any]] = tree_flatten(m.parameters())
                for leaf, value in leaves:
                    if "." not in leaf:
                        allowed[f"{p}.{leaf}"] = value
            for name, w in weights.items():
                if name not in allowed:
                    raise AdapterError(f"{info.name} has {name}, which is not an adapter "
                                       "parameter of this model: it belongs to another model")
                if tuple(w.shape) != tuple(allowed[name].shape):
                    raise AdapterError(f"{info.name}: {name} has shape {shape_text(w.shape)}, the "
                                       f"model needs {shape_text(allowed[name].shape)}")
            model.load_weights(list(weights.items()), strict=False)
            for m in modules.values():
                m.eval()
            mx.eval([m.parameters() for m in modules.values()])
        except AdapterError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise AdapterError(f"{info.name} cannot be put on this model "
                               f"({type(exc).__name__}: {exc}): it belongs to another "
                               "model or its config is damaged") from None
        finally:
            # Put back every base layer, whatever happened, then the previous adapter.
            now = dict(model.named_modules())
            restore = [(p, m) for p, m in before.items() if p in now and now[p] is not m]
            if restore:
                model.update_modules(tree_unflatten(restore))
            self._install(previous)
            self.scale = previous_scale
        for p in modules:
            self.base.setdefault(p, before[p])
        return PreparedAdapter(info, digest, modules, signature)

    def _ready(self, key: str) -> PreparedAdapter | None:
        """The prepared adapter for folder ``key`` if its files have not changed since."""
        prepared = self.prepared.get(key)
        if prepared is None:
            return None
        try:
            fresh = _signature(Path(key)) == prepared.signature
        except OSError:
            fresh = False
        return prepared if fresh else None

    # -- public ---------------------------------------------------------------------------
    def activate(self, path: str | Path | None, scale: float | None = None
                 ) -> tuple[PreparedAdapter | None, float, float]:
        """Install the adapter at ``path`` (None = base model) at ``scale`` (x trained).

        Returns (prepared adapter or None, prepare seconds, swap seconds). Raises a one-line
        ``AdapterError``/``BadSetting``; the previously installed adapter then stays.
        """
        if self.model is None:
            from common.errors import NoModel

            raise NoModel("no model is loaded yet: load one before choosing an adapter")
        if path is None:
            start = time.perf_counter()
            self._install(None)
            self.scale = None
            return None, 0.0, time.perf_counter() - start
        value = check_scale(scale)
        start = time.perf_counter()
        key = location_key(path)  # the folder as the prepared set knows it
        prepared = self._ready(key)
        prepare_s = 0.0
        if prepared is None:
            info = self.check(key)
            if not info.valid:
                raise AdapterError(info.reason, path=info.path)
            try:
                prepared = self._prepare(info)
            except OSError as exc:
                raise AdapterError(f"{info.name} cannot be read ({exc.strerror or exc}): "
                                   "check the folder") from None
            stale = self.prepared.pop(key, None)
            if stale is not None and stale.digest != prepared.digest:
                self.evicted.append(stale)  # changed on disk: its caches are stale too
            prepare_s = time.perf_counter() - start
        self.prepared[key] = prepared
        self.prepared.move_to_end(key)
        prepared.set_scale(value)
        fuse_start = time.perf_counter()
        if self._choose_set(prepared):  # fused copies made now: part of preparing it
            prepare_s += time.perf_counter() - fuse_start
        start = time.perf_counter()
        self._install(prepared)
        swap_s = time.perf_counter() - start
        self.scale = value
        self._evict()
        return prepared, prepare_s, swap_s

    def set_scale(self, scale: float | None) -> float:
        """Change the active adapter's scale (x trained) without a reload."""
        if self.active is None:
            raise AdapterError("no adapter is active: choose one first, then set its scale")
        value = check_scale(scale)
        self.active.set_scale(value)
        self._choose_set(self.active)
        self._install(self.active)  # the fused copies, made again at this scale
        self.scale = value
        return value

    def set_mode(self, mode: str | None) -> str:
        """Change the mode setting (auto | fused | unfused); the active adapter follows."""
        value = check_mode(mode)
        self.mode = value
        if value == "unfused":
            for prepared in self.prepared.values():
                prepared.note = ""
                if prepared is not self.active:
                    prepared.drop_fused()
        if self.active is not None:
            self._choose_set(self.active)
            self._install(self.active)
            if value == "unfused":
                self.active.drop_fused()
        return value

    # -- fused copies ---------------------------------------------------------------------
    def _choose_set(self, prepared: PreparedAdapter) -> bool:
        """Decide which module set ``prepared`` runs with, making its fused copies (at its
        current scale) when the mode asks for them and memory allows; fused copies of other
        adapters, least recently used first, are dropped to make room. True when fused
        copies were made now."""
        prepared.note = ""
        if self.mode == "unfused":
            prepared.use_fused = False
            return False
        lora_scale = self._lora_scale(prepared)
        if prepared.fused is not None and prepared.fused_scale == lora_scale:
            prepared.use_fused = True
            return False
        if not can_fuse(prepared.modules):
            prepared.drop_fused()
            prepared.note = "its layers cannot be fused: running unfused"
            return False
        prepared.drop_fused()  # made at another scale
        need = fused_nbytes(prepared.modules)
        available = self.memory_probe() if self.memory_probe is not None else 0
        note = fit_note(self.mode, need, available)
        for other in list(self.prepared.values()):
            if not note:
                break
            if other is not prepared and other.fused is not None:
                available += other.drop_fused()
                note = fit_note(self.mode, need, available)
        if note:
            prepared.note = note
            return False
        try:
            prepared.fused = fuse_modules(prepared.modules)
        except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of device memory
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            prepared.note = f"fusing failed ({first}): running unfused"
            return False
        prepared.fused_scale, prepared.fused_bytes, prepared.use_fused = lora_scale, need, True
        return True

    @staticmethod
    def _lora_scale(prepared: PreparedAdapter) -> float:
        """The scale ``prepared``'s wrappers use now (trained scale x multiplier)."""
        for module in prepared.modules.values():
            if hasattr(module, "scale"):
                return float(module.scale)
        return prepared.info.scale

    def fused_bytes(self) -> int:
        """Bytes held by every prepared adapter's fused copies."""
        return sum(p.fused_bytes for p in self.prepared.values() if p.fused is not None)

    def _evict(self) -> None:
        while len(self.prepared) > self.max_prepared:
            for path, prepared in self.prepared.items():
                if prepared is not self.active:
                    del self.prepared[path]
                    self.evicted.append(prepared)
                    break
            else:
                return

    def prepared_names(self) -> tuple[str, ...]:
        return tuple(p.info.name for p in self.prepared.values())

    def active_key(self) -> AdapterKey | None:
        if self.active is None or self.scale is None:
            return None
        return self.active.key(self.scale)

    def __iter__(self) -> Iterator[PreparedAdapter]:
        return iter(self.prepared.values())
