"""Repository-wide pytest hooks.

Every notebook in notebooks/ must be part of a run that covers that folder: if the run's paths
include notebooks/ (the default testpaths do) and some notebook produced no test items — nbval
not active, a notebook filtered out — the run fails instead of silently skipping it.
"""

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent / "notebooks"


def _covers(arg_path: Path, nb: Path) -> bool:
    return arg_path == nb or arg_path in nb.parents


def pytest_collection_modifyitems(session, config, items):
    args = [Path(str(a).split("::")[0]).resolve() for a in (config.args or [])]
    expected = [nb.resolve() for nb in sorted(NOTEBOOKS.glob("*.ipynb"))]
    collected = {Path(str(item.fspath)).resolve() for item in items}
    deselect_filters = config.getoption("keyword") or config.getoption("markexpr")
    missing = [nb for nb in expected if any(_covers(a, nb) for a in args) and nb not in collected]
    if missing and not deselect_filters:
        names = ", ".join(nb.name for nb in missing)
        raise pytest.UsageError(
            f"notebook(s) {names} are in the run's paths but produced no tests: run pytest with --nbval-lax "
            f"(the default addopts in pyproject.toml) so every notebook executes"
        )
