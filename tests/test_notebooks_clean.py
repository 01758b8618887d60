"""Committed notebooks read well on GitHub: no progress bar stored at its first frame, no widget state."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("clean_notebook", ROOT / "tools" / "clean_notebook.py")
clean_notebook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(clean_notebook)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_needs_no_cleaning(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert clean_notebook.clean(nb) == 0, f"run: python tools/clean_notebook.py {path.relative_to(ROOT)}"


def test_clean_drops_frozen_bars_and_keeps_explorers():
    bar = {"output_type": "display_data", "data": {clean_notebook.WIDGET: {}, "text/plain": ["train:   0%|   | 0/9"]}}
    explorer = {"output_type": "display_data", "data": {clean_notebook.WIDGET: {}, "text/plain": ["VBox(children=…)"]}}
    text = {"output_type": "stream", "name": "stdout", "text": ["50%| of the way\n"]}
    nb = {"metadata": {"widgets": {}}, "cells": [{"cell_type": "code", "outputs": [bar, explorer, text]}]}
    assert clean_notebook.clean(nb) == 2
    assert nb["cells"][0]["outputs"] == [explorer, text] and "widgets" not in nb["metadata"]
