"""Streams side by side in the terminal: what ``tokenflow compare`` shows live and
``tokenflow replay`` plays back for a recording of several streams."""

from __future__ import annotations


# Narrower than this, a column would show a few words a line: the panels go one below another.
MIN_COLUMN_WIDTH = 32


class LiveColumns:
    """Streams shown side by side in the terminal, one rich panel per column, in order;
    each panel starts with its whole title (wrapped, never cut). On a terminal too
    narrow for every column to get ``MIN_COLUMN_WIDTH``, the panels are stacked."""

    def __init__(self, titles: list[str], console=None, title: str = ""):
        from rich.console import Console

        self.titles = list(titles)
        self.texts = ["" for _ in titles]
        self.title = title
        self.console = console or Console()
        self._live = None

    def reset(self, index: int, title: str | None = None) -> None:
        """Empty column ``index`` (a new stream starts there), optionally retitled."""
        self.texts[index] = ""
        if title is not None:
            self.titles[index] = title

    def append(self, index: int, text: str) -> None:
        """Add a text delta to column ``index``; the live view redraws on its own."""
        self.texts[index] += text

    @property
    def stacked(self) -> bool:
        """One panel below another (the terminal is too narrow for side by side)."""
        return self.console.width < MIN_COLUMN_WIDTH * len(self.titles)

    def __rich__(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        # The title inside the panel, where it wraps; a border title is cut to the border.
        # fold: a word longer than the column breaks onto the next line instead of ending in "…".
        panels = [Panel(Text.assemble((title, "bold"), "\n", text, overflow="fold"))
                  for text, title in zip(self.texts, self.titles)]
        if self.stacked:
            body = Group(*panels)
        else:
            body = Table.grid(expand=True, padding=(0, 1))
            for _ in self.titles:
                body.add_column(ratio=1, overflow="fold")
            body.add_row(*panels)
        return Group(Text(self.title, style="bold"), body) if self.title else body

    def __enter__(self) -> "LiveColumns":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=12)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)
        self._live = None
