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
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterInfo,
    base_model_note,
    content_digest,
    inspect_adapter,
)
from .errors import AdapterError, BadSetting

MAX_SCALE = 2.0
DEFAULT_MAX_PREPARED = 4


@dataclass(frozen=True)
class AdapterKey:
    """The cache key for K/V computed under an adapter at a scale.

    Two keys are equal when the adapter's settings and weights (``digest``) and the scale are
    equal, whatever the folder is called; ``str(key)`` is the identity sessions store with a
    cache file, e.g. ``tone-a@3f2a9c01b4de x1``.
    """

    name: str = field(compare=False)
    digest: str
    scale: float

    def __str__(self) -> str:
        return f"{self.name}@{self.digest[:12]} x{self.scale:g}"


@dataclass(frozen=True)
class AdapterState:
    """Which adapter is active after a swap, and what the swap cost.

    ``info`` is None for "no adapter" (the base model). ``scale`` is the multiplier of the
    trained scale (None for the base model) and ``lora_scale`` the value the layers use.
    ``identity`` is ``str`` of the cache key ("" for the base model). ``swap_ms`` is the time
    to install the adapter's layers; ``prepare_ms`` the time to read and prepare it when it
    was not ready yet (0 when it came from the prepared set). ``cached_tokens`` is how many
    tokens of K/V are already cached under this adapter and scale: the next reply reuses what
    it shares with them and re-prefills the rest. ``prepared`` names the adapters kept ready.
    """

    info: AdapterInfo | None
    scale: float | None
    lora_scale: float | None
    identity: str
    swap_ms: float = 0.0
    prepare_ms: float = 0.0
    cached_tokens: int = 0
    prepared: tuple[str, ...] = ()

    @property
    def name(self) -> str | None:
        """The adapter's display name, None for the base model."""
        return self.info.name if self.info else None

    @property
    def path(self) -> str | None:
        return self.info.path if self.info else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.name, "path": self.path, "scale": self.scale,
            "lora_scale": self.lora_scale, "identity": self.identity,
            "swap_ms": self.swap_ms, "prepare_ms": self.prepare_ms,
            "cached_tokens": self.cached_tokens, "prepared": list(self.prepared),
            "info": self.info.to_dict() if self.info else None,
        }


@dataclass
class PreparedAdapter:
    """One adapter's wrapper modules, by module path, with its weights loaded."""

    info: AdapterInfo
    digest: str
    modules: dict[str, Any]
    signature: tuple[int, int, int, int]  # sizes and mtimes of its two files

    def key(self, scale: float) -> AdapterKey:
        return AdapterKey(self.info.name, self.digest, scale)

    def set_scale(self, scale: float) -> float:
        lora_scale = self.info.scale * scale
        for module in self.modules.values():
            if hasattr(module, "scale"):
                module.scale = lora_scale
        return lora_scale


def check_scale(scale: float | None) -> float:
    """The scale multiplier to use (None = 1, as trained), or a one-line ``BadSetting``."""
    if scale is None:
        return 1.0
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise BadSetting(f"adapter scale must be a number from 0 to {MAX_SCALE:g} (times the "
                         f"trained scale), not {scale!r}") from None
    if not 0.0 <= value <= MAX_SCALE:
        raise BadSetting(f"adapter scale must be from 0 to {MAX_SCALE:g} (times the trained "
                         f"scale; 1 = as trained), not {value:g}")
    return value


def _folder_key(path: str | Path) -> str:
    """The adapter folder as the prepared set knows it (absolute, links resolved)."""
    folder = Path(path).expanduser()
    try:
        return str(folder.resolve())
    except OSError:
        return str(folder.absolute())


def _signature(path: Path) -> tuple[int, int, int, int]:
    a, b = (path / CONFIG_FILE).stat(), (path / WEIGHTS_FILE).stat()
    return (a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns)


# -- checking an adapter against a loaded model ----------------------------------------------

def _lora_types() -> Any:
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    return ((nn.Linear, nn.QuantizedLinear), (SwitchLinear, QuantizedSwitchLinear),
            (nn.Embedding, nn.QuantizedEmbedding))


def _wrapper_for(module: Any, info: AdapterInfo) -> Any:
    """The wrapper mlx-lm's ``linear_to_lora_layers`` would build around ``module``.

    Its adapter arrays are lazy (never evaluated), so this costs no compute: it only tells the
    exact shapes mlx-lm expects, quantized layers included.
    """
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    dora = info.fine_tune_type == "dora"
    kw: dict[str, Any] = {"r": info.rank, "scale": info.scale, "dropout": info.dropout}
    if not dora and hasattr(module, "to_lora"):
        return module.to_lora(**kw)
    linear, switch, embedding = _lora_types()
    if isinstance(module, linear):
        return (DoRALinear if dora else LoRALinear).from_base(module, **kw)
    if isinstance(module, switch):
        if dora:
            raise AdapterError(f"{info.name} is a DoRA adapter on expert (switch) layers, "
                               "which mlx-lm does not support")
        return LoRASwitchLinear.from_base(module, **kw)
    if isinstance(module, embedding):
        return (DoRAEmbedding if dora else LoRAEmbedding).from_base(module, **kw)
    raise AdapterError(f"{info.name} targets {type(module).__name__} layers, which cannot carry "
                       "a LoRA adapter")


def _is_target_type(module: Any) -> bool:
    linear, switch, embedding = _lora_types()
    return hasattr(module, "to_lora") or isinstance(module, linear + switch + embedding)


def target_modules(model: Any, info: AdapterInfo) -> dict[str, Any]:
    """The modules (by full path) that mlx-lm would wrap for this adapter's config.

    Mirrors the selection in ``mlx_lm.tuner.utils.linear_to_lora_layers``: the last
    ``num_layers`` blocks (all for -1), the config's ``keys`` relative to a block (default:
    every linear, switch or embedding layer in the blocks), plus keys naming a module from
    the model's root.
    """
    layers = list(getattr(model, "layers", []) or [])
    if not layers:
        raise AdapterError(f"{info.name}: this model has no transformer blocks mlx-lm can put "
                           "adapters on")
    if info.num_layers > len(layers):
        raise AdapterError(f"{info.name} was trained on {info.num_layers} layers and this model "
                           f"has {len(layers)}: it belongs to another model"
                           f"{_trained_on(info)}")
    names = {id(m): n for n, m in model.named_modules()}
    keys = set(info.keys)
    if not keys:
        for block in layers:
            for k, m in block.named_modules():
                if _is_target_type(m):
                    keys.add(k)
    chosen = layers[-max(info.num_layers, 0):]
    targets: dict[str, Any] = {}
    for block in chosen:
        prefix = names.get(id(block))
        if prefix is None:
            continue
        for k, m in block.named_modules():
            if k in keys:
                targets[f"{prefix}.{k}"] = m
    for k, m in model.named_modules():
        if k in keys:
            targets[k] = m
    return targets


def _trained_on(info: AdapterInfo) -> str:
    return f" (it was trained on {info.base_model})" if info.base_model else ""


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def check_against_model(info: AdapterInfo, model: Any, model_path: str,
                        model_name: str = "") -> AdapterInfo:
    """Check a files-valid adapter against the loaded model, without changing the model.

    Returns ``info`` with ``checked_against`` set, ``valid``/``reason`` updated (layer count,
    target layers, tensor names and shapes, rank) and a note when its recorded base model
    differs from the loaded one. An invalid ``info`` is returned as it is.
    """
    if not info.valid:
        return info
    label = model_name or Path(model_path).name
    info = replace(info, checked_against=label)
    try:
        _check_tensors_fit(info, model, label)
    except AdapterError as exc:
        return info.invalid(str(exc))
    note = base_model_note(info, model_path)
    if note:
        info = replace(info, notes=(*info.notes, note))
    return info


def _check_tensors_fit(info: AdapterInfo, model: Any, label: str) -> None:
    from mlx.utils import tree_flatten

    from .adapters import read_tensor_specs

    specs = read_tensor_specs(Path(info.path))
    targets = target_modules(model, info)
    if not targets:
        raise AdapterError(f"{info.name}: none of the layers its config names "
                           f"({', '.join(info.keys) or 'linear layers'}) exist in {label}: it "
                           f"belongs to another model{_trained_on(info)}")
    all_modules = dict(model.named_modules())
    expected: dict[str, dict[str, tuple[int, ...]]] = {}
    for spec in specs:
        module_path, _, leaf = spec.name.rpartition(".")
        if module_path not in targets:
            if module_path in all_modules:
                raise AdapterError(
                    f"{info.name} has weights for {module_path}, a layer its config does not "
                    f"adapt (num_layers {info.num_layers}, keys "
                    f"{', '.join(info.keys) or 'default'}): the config does not match the "
                    "weights")
            raise AdapterError(f"{info.name} has weights for {module_path}, which {label} does "
                               f"not have: it belongs to another model{_trained_on(info)}")
        if module_path not in expected:
            wrapper = _wrapper_for(targets[module_path], info)
            own: dict[str, Any] = dict(tree_flatten(wrapper.parameters()))
            expected[module_path] = {k: tuple(v.shape) for k, v in own.items() if "." not in k}
        want = expected[module_path].get(leaf)
        if want is None:
            raise AdapterError(f"{info.name} has {spec.name}, which is not a parameter of a "
                               f"{info.type_label} layer in {label}")
        if tuple(spec.shape) != want:
            raise AdapterError(f"{info.name}: {spec.name} has shape {_shape(spec.shape)}, "
                               f"{label} needs {_shape(want)}: the adapter belongs to another "
                               f"model{_trained_on(info)}")


# -- preparing and swapping -----------------------------------------------------------------

class AdapterManager:
    """The adapters prepared for one loaded model, and which one is installed.

    Lives on the engine thread with the model. ``activate`` leaves the previous adapter
    installed whenever it raises.
    """

    def __init__(self, max_prepared: int = DEFAULT_MAX_PREPARED) -> None:
        self.max_prepared = max(1, int(max_prepared))
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
            updates += list(target.modules.items())
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
                    raise AdapterError(f"{info.name}: {name} has shape {_shape(w.shape)}, the "
                                       f"model needs {_shape(allowed[name].shape)}")
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
            from .errors import NoModel

            raise NoModel("no model is loaded yet: load one before choosing an adapter")
        if path is None:
            start = time.perf_counter()
            self._install(None)
            self.scale = None
            return None, 0.0, time.perf_counter() - start
        value = check_scale(scale)
        start = time.perf_counter()
        key = _folder_key(path)
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
        start = time.perf_counter()
        prepared.set_scale(value)
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
        self.scale = value
        return value

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
