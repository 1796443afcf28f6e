"""The full-screen app (Textual): ``tui.app.WorkbenchApp`` and what it is made of."""
