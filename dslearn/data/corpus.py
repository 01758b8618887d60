"""The embedded offline corpus: the CPython standard library's own source code.

Every Python installation ships its standard library as ``.py`` files, so the course has a
multi-megabyte, real-world text corpus without downloading anything. The selection is
deterministic:

- every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, in sorted POSIX path order,
- skipping test suites (``test``, ``tests``, ``idle_test``), third-party packages
  (``site-packages``), caches, generated tables (``encodings``, ``pydoc_data``, ``_sysconfigdata*``)
  and the build configuration directory (``config-*``),
- only regular files (a FIFO, a device or a symlink to one is skipped: reading it would hang or never
  end) of at most ``MAX_FILE_BYTES`` (the largest stdlib module is far smaller),
- each file prefixed by a one-line header ``# ==> relative/path.py <==``.

Files are split into train and validation **by file** — a file whose path hashes into the first
``val_percent`` of 100 buckets is validation — so no validation text is ever seen in training and
the split does not depend on which other files exist. The corpus records the Python version and a
SHA-256 of its content: different Python versions ship different standard libraries, and results
quote the hash they were measured on.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                       "encodings", "pydoc_data", "lib-dynload"})
HEADER = "# ==> {path} <==\n"
MAX_FILE_BYTES = 4 << 20  # larger "source files" are skipped (the stdlib's largest .py is well under 1 MiB)


class CorpusError(RuntimeError):
    """The corpus cannot be found, or is too small for what was asked of it."""


@dataclass(frozen=True)
class Corpus:
    train: bytes
    val: bytes
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    root: str
    python_version: str
    sha256: str

    def describe(self) -> str:
        return (f"CPython {self.python_version} stdlib at {self.root}: "
                f"{len(self.train_files)} train files ({len(self.train):,} bytes), "
                f"{len(self.val_files)} validation files ({len(self.val):,} bytes), sha256 {self.sha256[:12]}…")


def default_root() -> Path:
    """The directory holding the running Python's standard library (``DSLEARN_CORPUS_DIR`` overrides)."""
    return Path(os.environ.get("DSLEARN_CORPUS_DIR") or sysconfig.get_paths()["stdlib"])


def select_files(root: Path) -> list[str]:
    """Relative POSIX paths of the corpus files under root, sorted."""
    picked = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata") and _readable(Path(dirpath, name)):
                picked.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(picked)


def _readable(path: Path) -> bool:
    """A regular file (symlinks followed) of at most MAX_FILE_BYTES: never a FIFO, device or socket."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE_BYTES


def _read(path: Path) -> bytes:
    """The file's bytes, refusing (CorpusError) one that stopped being a small regular file since it was listed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorpusError(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise CorpusError(f"{path} grew past {MAX_FILE_BYTES:,} bytes while being read")
    return data


def is_validation(relpath: str, val_percent: int) -> bool:
    bucket = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:4], "big") % 100
    return bucket < val_percent


def load_corpus(root: str | os.PathLike | None = None, val_percent: int = 5) -> Corpus:
    """Read and split the corpus (cached per root; None: ``default_root()`` as it is now). Raises CorpusError
    if it cannot be found."""
    return _load_corpus(str(Path(root) if root is not None else default_root()), val_percent)


def _read_corpus(root: str | os.PathLike | None = None, val_percent: int = 5) -> Corpus:
    """``load_corpus`` without the cache (``load_corpus.__wrapped__``): read the files again."""
    if not 0 < val_percent < 100:
        raise ValueError(f"val_percent must be in 1..99, got {val_percent}")
    root = Path(root) if root is not None else default_root()
    if root.exists() and not root.is_dir():
        raise CorpusError(f"corpus path {root} is a file, not a directory; set DSLEARN_CORPUS_DIR to a directory "
                          f"of .py files")
    if not root.is_dir():
        raise CorpusError(
            f"corpus directory {root} does not exist. dslearn reads the Python standard library's "
            f"source; set DSLEARN_CORPUS_DIR to a directory of .py files if your Python ships without it"
        )
    files = select_files(root)
    if not files:
        raise CorpusError(f"no .py files found under {root}; set DSLEARN_CORPUS_DIR to a directory of .py files")
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    names: dict[bool, list[str]] = {False: [], True: []}
    digest = hashlib.sha256()
    for rel in files:
        text = HEADER.format(path=rel).encode() + _read(root / rel)
        digest.update(text)
        split = is_validation(rel, val_percent)
        parts[split].append(text)
        names[split].append(rel)
    if not names[False] or not names[True]:
        raise CorpusError(f"{root} holds {len(files)} file(s): too few to split into train and validation")
    return Corpus(
        train=b"".join(parts[False]), val=b"".join(parts[True]),
        train_files=tuple(names[False]), val_files=tuple(names[True]), root=str(root),
        python_version=platform.python_version(), sha256=digest.hexdigest(),
    )


_load_corpus = functools.lru_cache(maxsize=4)(_read_corpus)
load_corpus.__wrapped__ = _read_corpus
