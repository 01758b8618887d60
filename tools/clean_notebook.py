"""Make executed notebooks fit to commit: no widget state, no progress bars frozen at their first frame.

    python tools/clean_notebook.py notebooks/NAME.ipynb [...]     # after jupyter nbconvert --execute --inplace

A progress bar (tqdm in a notebook) is a widget: what an executed notebook stores is its text form at the
moment it was displayed, "0%|  | 0/200", which a reader on GitHub sees forever. The bar meant something only
while the cell ran, so it is dropped; the explorers' widgets (sliders, dropdowns) stay, each with its static
fallback beside it. Widget state (``metadata.widgets``) is dropped too: nothing here replays it.
``tests/test_notebooks_clean.py`` fails on a committed notebook that needs this.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

WIDGET = "application/vnd.jupyter.widget-view+json"
FROZEN_BAR = re.compile(r"\d+%\|")  # tqdm's text form: "desc:   0%|          | 0/200 [...]"


def is_frozen_bar(output: dict) -> bool:
    data = output.get("data", {})
    return WIDGET in data and bool(FROZEN_BAR.search("".join(data.get("text/plain", ""))))


def clean(nb: dict) -> int:
    """Drop frozen progress bars and widget state from a notebook dict in place; returns how much was dropped."""
    dropped = int("widgets" in nb.get("metadata", {}))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            kept = [o for o in cell.get("outputs", []) if not is_frozen_bar(o)]
            dropped += len(cell["outputs"]) - len(kept)
            cell["outputs"] = kept
    return dropped


def main(paths: list[str]) -> int:
    for p in paths:
        nb = json.loads(Path(p).read_text(encoding="utf-8"))
        n = clean(nb)
        Path(p).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{p}: dropped {n} frozen bar(s) / widget state")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
