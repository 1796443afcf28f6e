"""A line under a table that says so when the table is wider than its room.

At 80 columns the sessions and models tables hold more columns than fit; the ones on the
right are a horizontal scroll away, and nothing showed that they were there. This hint
appears only then, and names the keys that reach them.
"""

from __future__ import annotations

from textual.widgets import DataTable, Static

TEXT = "More columns to the right: ← → scroll the table."


class ColumnsHint(Static):
    DEFAULT_CSS = """
    ColumnsHint {
        color: $text-muted;
        height: 1;
    }
    """

    def __init__(self, table: DataTable[str], **kwargs: object) -> None:
        super().__init__(TEXT, markup=False, **kwargs)  # type: ignore[arg-type]
        self.table = table
        self.display = False

    def on_mount(self) -> None:
        self.watch(self.table, "virtual_size", lambda _size: self.check(), init=False)

    def check(self) -> None:
        """Show the hint while the table's columns do not all fit (call after a resize)."""
        self.display = self.table.virtual_size.width > self.table.scrollable_content_region.width
