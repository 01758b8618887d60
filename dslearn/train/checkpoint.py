"""Checkpoints that survive crashes: safetensors weights plus optimizer and RNG state.

Layout of a run directory::

    run/checkpoints/step_000200/model.safetensors   weights (safetensors, loadable anywhere)
    run/checkpoints/step_000200/state.pt            optimizer state, RNG state, step (torch.save)
    run/checkpoints/step_000200/meta.json           model config, train config, step, SHA-256 of both files
    run/checkpoints/LATEST                          the name of the newest complete checkpoint
    run/.lock                                       held (flock) by the process training in run/

Writing is atomic and durable: everything goes into a hidden temporary directory, every file is
``fsync``'d, the directory is renamed into place and its parent ``fsync``'d; only then is ``LATEST``
written to a temporary name, ``fsync``'d and swapped in (``os.replace``, atomic on POSIX). A crash at
any moment leaves at least one complete checkpoint. Older checkpoints are pruned by their step number
(not their name's text), and left-over temporary directories of an interrupted save are swept.

Reading trusts nothing: ``meta.json`` records the SHA-256 of the weights and the state, and a checkpoint
whose files are missing, truncated or altered is skipped **with a warning** for the newest intact one
(whatever ``LATEST`` says); only when none is intact is there an error. Weights holding NaN/inf are
refused. A disk that fills up mid-save is reported as "no space left on device" (after one retry with
the older checkpoints pruned first), and the previous checkpoint is kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..config import IMPLEMENTATION_FIELDS, ModelConfig
from ..model import CausalLM

LATEST = "LATEST"
FILES = ("model.safetensors", "state.pt")  # the files whose SHA-256 meta.json records


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not match the model it is loaded into."""


class RunConflictError(CheckpointError):
    """The run directory holds a different run (another recipe, another kind of run): choose another."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped for an older intact one."""


# --- durable writes ------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    """fsync a file or directory by name (directories cannot be opened on Windows: skipped there)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def step_of(path: Path) -> int | None:
    """The step number of a ``step_*`` directory name, None for any other name."""
    name = Path(path).name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def _steps(ckpt_dir: Path) -> list[Path]:
    """The ``step_*`` directories of ckpt_dir, oldest first by step number."""
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and step_of(p) is not None] if ckpt_dir.is_dir() else []
    return sorted(found, key=step_of)


def sweep_debris(ckpt_dir: Path) -> None:
    """Remove what an interrupted save left behind (``.tmp-*``, ``.old-*``, a half-written LATEST)."""
    for p in ckpt_dir.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)
    (ckpt_dir / f".{LATEST}.tmp").unlink(missing_ok=True)


def _no_space(e: BaseException, where: Path) -> bool:
    """Whether a failed write ran out of disk: ENOSPC from Python, 'os error 28' from safetensors, or
    torch.save's bare 'file write failed' with the disk (nearly) full."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(e) or "os error 28" in str(e):
        return True
    if "write failed" in str(e):
        try:
            return shutil.disk_usage(where).free < (64 << 20)
        except OSError:
            return False
    return False


def _write_tmp(ckpt_dir: Path, name: str, model, optimizer, step: int, meta: dict | None) -> Path:
    tmp = ckpt_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        _fsync_path(tmp / "model.safetensors")  # safetensors writes without fsync
        state = {"step": step, "torch_rng": torch.get_rng_state(),
                 "optimizer": optimizer.state_dict() if optimizer is not None else None}
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        sums = {f: _sha256(tmp / f) for f in FILES}
        body = {"step": step, "model_config": model.config.to_dict(), **(meta or {}), "sha256": sums}
        _write_bytes(tmp / "meta.json", json.dumps(body, indent=1, sort_keys=True).encode())
        _fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def save_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer, step: int, meta: dict | None = None,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ckpt_dir atomically and durably, then keep only the newest ``keep``.

    Raises CheckpointError("no space left on device …") when the disk is full even after pruning the
    older checkpoints first; the newest previous checkpoint is kept in every case."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sweep_debris(ckpt_dir)
    name = f"step_{step:06d}"
    try:
        tmp = _write_tmp(ckpt_dir, name, model, optimizer, step, meta)
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error type
        if not _no_space(e, ckpt_dir):
            raise
        older = [p for p in _steps(ckpt_dir) if p.name != name][:-1]  # keep the newest previous one
        for p in older:
            shutil.rmtree(p, ignore_errors=True)
        try:
            tmp = _write_tmp(ckpt_dir, name, model, optimizer, step, meta)
        except Exception as e2:  # noqa: BLE001
            if not _no_space(e2, ckpt_dir):
                raise
            kept = _steps(ckpt_dir)
            raise CheckpointError(
                f"no space left on device: could not write checkpoint {name} in {ckpt_dir} "
                f"(free {shutil.disk_usage(ckpt_dir).free:,} bytes); "
                f"{'kept ' + kept[-1].name if kept else 'no earlier checkpoint exists'}. "
                f"Free some space and run again to resume") from None
    final = ckpt_dir / name
    if final.exists():  # re-saving the same step (e.g. after a resume): swap, then delete
        old = ckpt_dir / f".old-{name}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_path(ckpt_dir)
    latest_tmp = ckpt_dir / f".{LATEST}.tmp"
    _write_bytes(latest_tmp, name.encode())
    os.replace(latest_tmp, ckpt_dir / LATEST)
    _fsync_path(ckpt_dir)
    for old in _steps(ckpt_dir)[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


# --- reading, trusting nothing --------------------------------------------------------------------
def check_intact(path: Path) -> dict:
    """The meta dict of checkpoint directory ``path`` if its files are all there and match the SHA-256
    sums its meta records; else CheckpointError saying what is wrong."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no meta.json") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/meta.json is unreadable ({type(e).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or "model_config" not in meta:
        raise CheckpointError(f"{path}/meta.json is not a checkpoint's meta")
    for f in FILES:
        if not (path / f).is_file():
            raise CheckpointError(f"{path} has no {f}")
        want = meta.get("sha256", {}).get(f)
        if want is not None and _sha256(path / f) != want:
            raise CheckpointError(f"{path}/{f} is damaged (its SHA-256 differs from the one in meta.json)")
    return meta


def _candidates(ckpt_dir: Path) -> list[Path]:
    """Where to look, best first: LATEST's target, then every step directory, newest first."""
    out = []
    try:
        named = (ckpt_dir / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    if named and step_of(Path(named)) is not None and (ckpt_dir / named).is_dir():
        out.append(ckpt_dir / named)
    out += [p for p in reversed(_steps(ckpt_dir)) if p not in out]
    return out


def find_intact(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint in ckpt_dir (``LATEST``'s first), warning about each damaged one
    skipped; None if there is no checkpoint directory at all. CheckpointError if some exist but none is intact."""
    ckpt_dir = Path(ckpt_dir)
    candidates = _candidates(ckpt_dir)
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            check_intact(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"skipped damaged checkpoint(s): {'; '.join(problems)}; using {path.name}",
                          CheckpointWarning, stacklevel=3)
        return path
    raise CheckpointError(f"no intact checkpoint in {ckpt_dir}: {'; '.join(problems)}")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a run directory, its ``checkpoints`` directory, or one ``step_*`` directory; return the
    newest intact checkpoint there (CheckpointError if there is none)."""
    path = Path(path)
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir() and ((candidate / LATEST).exists() or _steps(candidate)):
            found = find_intact(candidate)
            if found is not None:
                return found
    if (path / "model.safetensors").is_file() or (path / "meta.json").is_file():
        check_intact(path)
        return path
    raise CheckpointError(f"no complete checkpoint at {path} (expected model.safetensors, or a LATEST file)")


def read_meta(path: str | os.PathLike) -> dict:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def load_checkpoint(path: str | os.PathLike, model, optimizer=None, restore_rng: bool = False) -> dict:
    """Load weights (and optimizer/RNG state) into ``model``; returns the checkpoint's meta dict.

    Raises CheckpointError if the checkpoint was written for a differently configured model, or holds
    non-finite weights. Loading weights only, the model may differ in how it computes
    (``IMPLEMENTATION_FIELDS``: e.g. the absorbed MLA path for decoding a model trained naive); resuming
    training (``optimizer`` given) needs the very same config.
    """
    path = resolve_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    try:
        saved = ModelConfig.from_dict(meta["model_config"])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} holds a model config this version cannot read: {e}") from None
    diff = saved.differences(model.config)
    if optimizer is None:
        diff = {k: v for k, v in diff.items() if k not in IMPLEMENTATION_FIELDS}
    if diff:
        fields = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, a, b in
                           ((k, *v) for k, v in sorted(diff.items())))
        raise CheckpointError(f"checkpoint {path} was written for a different model config ({fields})")
    try:
        load_model(model, str(path / "model.safetensors"), strict=True)
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error types for damaged files
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from e
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights (NaN/inf in {', '.join(bad[:3])}"
                              f"{', …' if len(bad) > 3 else ''}); load an earlier checkpoint")
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}/state.pt is unreadable: {e}") from None
    if optimizer is not None:
        if state["optimizer"] is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["torch_rng"])
    return meta


def load_model_from_checkpoint(path: str | os.PathLike, device="cpu"):
    """Build the CausalLM a checkpoint describes and load its weights."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    model = CausalLM(ModelConfig.from_dict(meta["model_config"]))
    load_checkpoint(path, model)
    return model.to(device).eval()


# --- one process per run directory ---------------------------------------------------------------
class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock`` held while a process trains there (released when the
    process dies, however it dies). A second process gets CheckpointError naming the holder's pid."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one run per directory is then up to the user
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(f"run directory {self.path.parent} is in use by another process (pid {holder}); "
                                  f"wait for it to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()
