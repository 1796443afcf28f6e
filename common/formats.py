"""Numbers for people: bytes, counts and sizes as every face shows them."""

from __future__ import annotations


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def fmt_bytes(n: float) -> str:
    """Bytes for people: 512 B, 3.4 KB, 12.0 MB, 1.25 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GB" else f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_count(n: float) -> str:
    """A parameter count, short: 950, 3.4 K, 2.9 M, 1.2 B (as the sidebar shows it)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"
