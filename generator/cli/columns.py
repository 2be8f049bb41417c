"""Streams side by side in the terminal: what ``tokenflow compare`` shows live and
``tokenflow replay`` plays back for a recording of several streams."""

from __future__ import annotations


class LiveColumns:
    """Streams shown side by side in the terminal, one rich panel per column."""

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

    def __rich__(self):
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in self.titles:
            grid.add_column(ratio=1)
        grid.add_row(*(Panel(Text(t), title=title, title_align="left")
                       for t, title in zip(self.texts, self.titles)))
        if self.title:
            outer = Table.grid(expand=True)
            outer.add_row(Text(self.title, style="bold"))
            outer.add_row(grid)
            return outer
        return grid

    def __enter__(self) -> "LiveColumns":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=12)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)
        self._live = None
