"""A sweep's rows on disk: ``rows.jsonl``, one JSON object per finished cell, appended
and flushed as each cell finishes, so an interrupted run loses only the cells in flight.

    store = RowStore(out_dir)          # reads the rows already there (a resumed run)
    store.done                          # {key: row}
    store.append(row)                   # one line, flushed and fsynced

JSON Lines rather than Parquet: a row is written the moment its cell ends (Parquet
writes whole row groups and a cut file is unreadable), a cut last line is all an
interruption can cost (it is dropped when the file is reopened), rows are ragged
(token lists) and nested (params, timings), and it needs nothing beyond the standard
library; ``pandas.read_json(path, lines=True)`` or ``pyarrow.json`` read it as a table.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ROWS = "rows.jsonl"


class SweepMismatch(ValueError):
    """``--out`` holds rows that a different engine produced."""


def jsonable(obj: Any) -> Any:
    """Plain JSON: tuples to lists, NaN/inf to null."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class RowStore:
    """The rows of ``out/rows.jsonl``: the ones there when opened, and the ones appended."""

    def __init__(self, out: str | os.PathLike):
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / ROWS
        self.done: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}  # this run's failed cells (a rerun tries them again)
        self.dropped = 0  # a cut last line (an interrupted write)
        if self.path.exists():
            self._read()
        self._file = None

    def _read(self) -> None:
        data = self.path.read_bytes()
        cut = len(data) if data.endswith(b"\n") or not data else data.rfind(b"\n") + 1
        if cut < len(data):  # the write that was interrupted: drop it so appends start clean
            self.dropped = 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
        for line in data[:cut].decode("utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self.dropped += 1
                    continue
                if row.get("error") is None:  # a failed cell runs again
                    self.done[row["key"]] = row

    def check_engine(self, fingerprint: str) -> None:
        """Refuse to mix rows of another engine (weights, formats, kernel tier) into these."""
        other = {r.get("engine_fingerprint") for r in self.done.values()} - {fingerprint}
        if other:
            raise SweepMismatch(f"{self.path} holds rows of another engine ({', '.join(sorted(other))}, this one "
                                f"is {fingerprint}); use another --out")

    def append(self, row: dict[str, Any]) -> None:
        """Write one row as a line, flushed to the disk before returning."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if row.get("error") is None:
            self.done[row["key"]] = row
        else:
            self.failed[row["key"]] = row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RowStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete row of a ``rows.jsonl`` (or of ``out/rows.jsonl`` given the folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / ROWS
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
