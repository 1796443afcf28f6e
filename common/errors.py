"""Errors a user can cause. Each carries one line that says what is wrong and what to do."""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-facing error: ``str(err)`` is a single line fit to show as it is."""

    kind = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class ModelNotFound(WorkbenchError):
    kind = "model-not-found"


class NotAModel(WorkbenchError):
    kind = "not-a-model"


class OfflineError(WorkbenchError):
    kind = "offline"


class DownloadError(WorkbenchError):
    kind = "download"


class ModelTooBig(WorkbenchError):
    kind = "too-big"


class NoModel(WorkbenchError):
    kind = "no-model"


class ContextOverflow(WorkbenchError):
    kind = "context"


class BadSetting(WorkbenchError):
    kind = "bad-setting"


class AdapterError(WorkbenchError):
    kind = "adapter"


class Cancelled(Exception):
    """Raised inside the engine thread to stop a prefill between chunks."""


class EngineError(WorkbenchError):
    """An ``Error`` event raised by ``EventStream.result()``: the engine's one line, its kind
    (``no-model``, ``adapter``, ``cancelled``...) and details, as the engine sent them."""

    def __init__(self, message: str, kind: str = "error", **details: object) -> None:
        super().__init__(message, **details)
        self.kind = kind
