"""Where the repository's shipped files are, for notebooks and scripts: one helper instead of ``Path("..")``
(which depends on the working directory) or ``sys.path`` edits."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The checkout that holds this ``dslearn`` package (``experiments/`` and ``notebooks/`` sit beside it).
    Raises FileNotFoundError with a one-line reason when dslearn was installed without the repository."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "experiments").is_dir():
        raise FileNotFoundError(f"no experiments/ beside the dslearn package at {root}: the shipped results come "
                                "with a clone of the repository (pip install -e .), not with a wheel")
    return root


def experiments_dir(*parts: str) -> Path:
    """``repo_root()/experiments/<parts...>``, e.g. ``experiments_dir("parallel", "timeline.json")``."""
    return repo_root().joinpath("experiments", *parts)
