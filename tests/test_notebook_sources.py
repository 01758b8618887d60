"""Every notebook has a reviewable source: notebooks/src/NAME.py (Jupytext py:percent, paired by jupytext.toml),
holding the same cells as the executed notebooks/NAME.ipynb. Edit either, then ``jupytext --sync`` the pair."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext", reason="jupytext is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


def test_every_notebook_has_a_source_and_no_source_is_orphaned():
    sources = {p.stem for p in (ROOT / "notebooks" / "src").glob("*.py")}
    notebooks = {p.stem for p in NOTEBOOKS}
    assert notebooks, "no notebooks found"
    assert notebooks - sources == set(), f"run `jupytext --sync` on {sorted(notebooks - sources)}"
    assert sources - notebooks == set(), f"sources without a notebook: {sorted(sources - notebooks)}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_source_matches_notebook(notebook):
    source = ROOT / "notebooks" / "src" / f"{notebook.stem}.py"
    if not source.is_file():
        pytest.skip("reported by test_every_notebook_has_a_source_and_no_source_is_orphaned")
    ours, theirs = _cells(notebook), _cells(source)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, (f"{notebook.name} cell {i} differs from {source.relative_to(ROOT)}: "
                        f"`jupytext --sync` the pair (the newer side wins), re-execute, commit both")
    assert len(ours) == len(theirs), f"{notebook.name}: {len(ours)} cells, its source {len(theirs)}: `jupytext --sync`"


def test_pairing_is_configured():
    config = (ROOT / "jupytext.toml").read_text()
    assert "notebooks///ipynb,notebooks/src///py:percent" in config
