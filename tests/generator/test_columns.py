"""``LiveColumns``, what ``compare`` shows live and ``replay`` plays back: the columns
in their order, each with its whole title, side by side or one below another."""

import io

from rich.console import Console

from generator.cli.columns import MIN_COLUMN_WIDTH, LiveColumns

TITLES = [f"sample:temperature=0.{i},top_k={10 * i},top_p=0.9{i} #{i} (prompt 0)" for i in range(1, 5)]
TEXTS = [f"text of stream {i}" for i in range(1, 5)]


def render(width: int) -> tuple[LiveColumns, str]:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    view = LiveColumns(TITLES, console=console)
    for i, text in enumerate(TEXTS):
        view.append(i, text)
    console.print(view)
    return view, console.file.getvalue()


def words(text: str) -> str:
    return " ".join(text.split())


def test_side_by_side_columns_keep_order_and_whole_titles():
    view, out = render(4 * MIN_COLUMN_WIDTH + 8)
    assert not view.stacked
    # Each panel line is "│ ... │" per column: read column i down its lines.
    rows = [line.split("│")[1::2] for line in out.splitlines() if line.startswith("│")]
    columns = [words(" ".join(row[i] for row in rows)) for i in range(4)]
    for column, title, text in zip(columns, TITLES, TEXTS):
        assert words(column).replace(" ", "").startswith(title.replace(" ", ""))  # wrapped, never cut
        assert column.endswith(text)
    assert max(len(line) for line in out.splitlines()) <= 4 * MIN_COLUMN_WIDTH + 8


def test_a_narrow_terminal_stacks_the_panels_in_order():
    view, out = render(4 * MIN_COLUMN_WIDTH - 1)
    assert view.stacked
    flat = words(out.replace("│", " "))
    positions = [flat.find(title) for title in TITLES]
    assert -1 not in positions and positions == sorted(positions)
    assert all(flat.find(text) > pos for text, pos in zip(TEXTS, positions))
