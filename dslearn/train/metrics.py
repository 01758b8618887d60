"""A JSON-lines metrics log: one object per line, easy to append, to plot and to read back.

A process killed mid-append leaves a torn last line; readers skip a line that does not parse, and a
resumed run rewrites the log without it (``truncate_after``), so the run stays resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _records(text: str) -> list[dict]:
    """The whole records of a log's text; a torn or garbled line (a kill mid-write) is skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


class MetricsLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Keep only the whole records up to ``step`` (a resumed run rewrites the rest; ``step < 0``
        empties the log), atomically and durably."""
        if not self.path.exists():
            return
        kept = [] if step < 0 else [r for r in _records(self.path.read_text(errors="replace"))
                                    if r.get("step", -1) <= step]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Records of a metrics log (a run directory or the .jsonl file), optionally of one ``kind``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}")
    return [r for r in _records(path.read_text(errors="replace")) if kind is None or r.get("kind") == kind]
