"""Checkpoints that survive crashes: safetensors weights plus optimizer and RNG state.

Layout of a run directory::

    run/checkpoints/step_000200/model.safetensors   weights (safetensors, loadable anywhere)
    run/checkpoints/step_000200/state.pt            optimizer state, RNG state, step (torch.save)
    run/checkpoints/step_000200/meta.json           model config, train config, step
    run/checkpoints/LATEST                          the name of the newest complete checkpoint

Writing is atomic: everything goes into a hidden temporary directory, is flushed to disk, and is
renamed into place; only then is ``LATEST`` replaced (``os.replace``, atomic on POSIX and Windows).
A crash at any moment leaves ``LATEST`` pointing at a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..config import IMPLEMENTATION_FIELDS, ModelConfig
from ..model import CausalLM

LATEST = "LATEST"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not match the model it is loaded into."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer, step: int, meta: dict | None = None,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ckpt_dir atomically, then keep only the newest ``keep``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        state = {"step": step, "torch_rng": torch.get_rng_state(),
                 "optimizer": optimizer.state_dict() if optimizer is not None else None}
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _write_json(tmp / "meta.json", {"step": step, "model_config": model.config.to_dict(), **(meta or {})})
        _fsync_dir(tmp)
        final = ckpt_dir / name
        if final.exists():  # re-saving the same step (e.g. after a resume): swap, then delete
            old = ckpt_dir / f".old-{name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        latest_tmp = ckpt_dir / f".{LATEST}.tmp"
        latest_tmp.write_text(name)
        os.replace(latest_tmp, ckpt_dir / LATEST)
        _fsync_dir(ckpt_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir / name


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a run directory, its ``checkpoints`` directory, or one ``step_*`` directory."""
    path = Path(path)
    for candidate in (path / "checkpoints", path):
        if (candidate / LATEST).is_file():
            path = candidate / (candidate / LATEST).read_text().strip()
            break
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"no complete checkpoint at {path} (expected model.safetensors, or a LATEST file)")
    return path


def read_meta(path: str | os.PathLike) -> dict:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def load_checkpoint(path: str | os.PathLike, model, optimizer=None, restore_rng: bool = False) -> dict:
    """Load weights (and optimizer/RNG state) into ``model``; returns the checkpoint's meta dict.

    Raises CheckpointError if the checkpoint was written for a differently configured model. Loading weights
    only, the model may differ in how it computes (``IMPLEMENTATION_FIELDS``: e.g. the absorbed MLA path for
    decoding a model trained naive); resuming training (``optimizer`` given) needs the very same config.
    """
    path = resolve_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    saved = ModelConfig.from_dict(meta["model_config"])
    diff = saved.differences(model.config)
    if optimizer is None:
        diff = {k: v for k, v in diff.items() if k not in IMPLEMENTATION_FIELDS}
    if diff:
        fields = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, a, b in
                           ((k, *v) for k, v in sorted(diff.items())))
        raise CheckpointError(f"checkpoint {path} was written for a different model config ({fields})")
    try:
        load_model(model, str(path / "model.safetensors"), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from e
    state = torch.load(path / "state.pt", weights_only=True)
    if optimizer is not None:
        if state["optimizer"] is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["torch_rng"])
    return meta


def load_model_from_checkpoint(path: str | os.PathLike, device="cpu"):
    """Build the CausalLM a checkpoint describes and load its weights."""
    meta = read_meta(path)
    model = CausalLM(ModelConfig.from_dict(meta["model_config"]))
    load_checkpoint(path, model)
    return model.to(device).eval()
