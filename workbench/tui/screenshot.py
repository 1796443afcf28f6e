"""F12: an SVG screenshot of whatever is on screen, saved where a folder exists.

Textual saves into the user's Downloads folder and fails when there is none (a fresh
account, a server, a container). The workbench tries Downloads, then its data folder's
``screenshots`` (made if needed), then the current folder, and says where the file went.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.app import App


def downloads() -> Path:
    from platformdirs import user_downloads_path

    return user_downloads_path()


def folders() -> list[Path]:
    """Where a screenshot may go, best first."""
    from ..paths import data_dir

    return [downloads(), data_dir() / "screenshots", Path.cwd()]


def folder() -> Path:
    """The first of ``folders()`` that exists or can be made (the data folder's only)."""
    candidates = folders()
    for n, place in enumerate(candidates):
        if n == 1:  # the workbench's own folder may be made; a user's folders are not
            try:
                place.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
        if place.is_dir():
            return place
    return candidates[-1]


def save(app: App[Any], filename: str | None = None, path: str | None = None) -> Path | None:
    """Save the screen as SVG and notify where it went (or why it could not be saved)."""
    target = Path(path).expanduser() if path else folder()
    try:
        saved = Path(app.save_screenshot(filename, str(target)))
    except OSError as exc:
        app.notify(f"The screenshot could not be saved in {target}: {exc}",
                   title="Screenshot", severity="error", timeout=10)
        return None
    app.notify(f"Saved {saved}", title="Screenshot", timeout=8)
    return saved
