"""Shared pieces of the tests: the small configs, constants and functions several test files use.

Plain functions and constants live here and are imported by name (``from helpers import mla_config``);
fixtures live in conftest.py, where pytest finds them. A builder takes keyword overrides, so a test
states only how its config differs from the shared one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dslearn.config import ModelConfig
from dslearn.model import CausalLM
from dslearn.rl.sandbox import sandbox_mode

# --- dense and MLA models (chapters 00, 02) ---------------------------------------------------------------


def tiny_dense_config(**overrides) -> ModelConfig:
    """The tiny dense model of most tests (the ``tiny_config`` fixture): byte vocabulary, d = 64, 2 layers, MHA."""
    return ModelConfig(**(dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=64) | overrides))


MLA = dict(attention_type="mla", q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
           v_head_dim=12, rope_interleave=True)  # V2/V3's layout: query compression, interleaved decoupled RoPE


def mla_config(**overrides) -> ModelConfig:
    """``tiny_dense_config`` with MLA attention (d_c = 32, d_c' = 24, d_h = 16 + 8 RoPE, d_v = 12)."""
    return tiny_dense_config(**(MLA | overrides))


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> CausalLM:
    """A model whose weights are far from the init (norm gains ≠ 1, larger weights), so differences show."""
    model = CausalLM(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


# --- MoE (chapters 03, 04) ---------------------------------------------------------------------------------


def moe_config(**overrides) -> ModelConfig:
    """A tiny DeepSeekMoE model: 2 layers of 8 routed experts (K = 2, width 16) + 1 shared, 4 groups choose 2."""
    return ModelConfig(**(dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, max_position_embeddings=64, n_routed_experts=8,
                               num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, n_group=4,
                               topk_group=2) | overrides))


V3_GATING = dict(scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=2.5)


def v3_config(**overrides) -> ModelConfig:
    """``moe_config`` with V3's gate: sigmoid affinities, node-limited noaux_tc, normalised top-K × 2.5."""
    return moe_config(**(V3_GATING | overrides))


def moe_layer_config(**overrides) -> ModelConfig:
    """One MoE layer on its own: 8 experts of width 8, no shared expert, 4 groups choose 2."""
    return ModelConfig(**(dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, n_routed_experts=8, num_experts_per_tok=2,
                               moe_intermediate_size=8, n_group=4, topk_group=2) | overrides))


# --- pipelines across processes (chapter 06) ----------------------------------------------------------------


def pipeline_config(layers: int, **overrides) -> ModelConfig:
    """A dense model small enough to cut into stages and run in several processes (vocabulary 64, 16 positions)."""
    return ModelConfig(**(dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                               num_attention_heads=2, max_position_embeddings=16) | overrides))


def pipeline_moe_config(layers: int = 4, **overrides) -> ModelConfig:
    """``pipeline_config`` with V3-style routing (sigmoid, noaux_tc, normalised top-K × 2.5, sequence-wise
    balance loss), the first layer dense, 8 experts in 2 groups, one shared expert."""
    moe = dict(n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16,
               first_k_dense_replace=1, n_group=2, topk_group=2, **V3_GATING, seq_aux_loss_alpha=0.01)
    return pipeline_config(layers, **(moe | overrides))


def token_batch(rows: int, seq_len: int = 8, vocab: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (input_ids, targets), both drawn from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (rows, seq_len), generator=g),
            torch.randint(0, vocab, (rows, seq_len), generator=g))


def assert_same_step(out: dict, ref: dict, label: str) -> None:
    """A distributed training step equals the one-process reference: loss to 1e-5 absolute, every gradient
    to 1e-6 absolute + 1e-4 relative (fp32 sums in another order, observed ~2e-8)."""
    assert out["loss"] == pytest.approx(ref["loss"], abs=1e-5), label
    assert set(out["grads"]) == set(ref["grads"]), f"{label}: {set(ref['grads']) ^ set(out['grads'])}"
    for n, g in ref["grads"].items():
        torch.testing.assert_close(out["grads"][n], g, atol=1e-6, rtol=1e-4, msg=lambda m, n=n: f"{label} {n}: {m}")


# --- training and exercises ---------------------------------------------------------------------------------

# TrainConfig fields for a short CPU run; tests add steps/eval_every (``TrainConfig(**(FAST | dict(steps=30)))``)
FAST = dict(batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_windows=8, progress=False, log_every=1)


def todo(*args):
    """An exercise the learner has not touched yet: the checker must report TODO, not FAIL."""
    raise NotImplementedError


def require_browser() -> str:
    """The path of the Chromium that the browser tests drive (tests/test_browser_widgets.py). Skip unless
    Chromium, playwright and JupyterLab are all here; fail instead where CI sets DSLEARN_REQUIRE_BROWSER."""
    missing = [what for what, ok in (("chromium (apt-get install chromium)", shutil.which("chromium")),
                                     ("playwright (pip install playwright)", importlib.util.find_spec("playwright")),
                                     ("jupyterlab (pip install jupyterlab)", importlib.util.find_spec("jupyterlab")))
               if not ok]
    if missing:
        if os.environ.get("DSLEARN_REQUIRE_BROWSER"):
            pytest.fail(f"DSLEARN_REQUIRE_BROWSER is set but the browser tests cannot run: no {', no '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)}; CI sets DSLEARN_REQUIRE_BROWSER=1 to fail instead")
    return shutil.which("chromium")


def require_isolated_sandbox() -> None:
    """Skip unless the bubblewrap sandbox works here; fail instead where CI sets DSLEARN_REQUIRE_BWRAP."""
    if sandbox_mode() != "isolated":
        if os.environ.get("DSLEARN_REQUIRE_BWRAP"):
            pytest.fail("DSLEARN_REQUIRE_BWRAP is set but the isolated (bubblewrap) sandbox does not work here")
        pytest.skip("needs bubblewrap (apt-get install bubblewrap); CI sets DSLEARN_REQUIRE_BWRAP=1 to fail instead")


# --- child processes: one, or several under torchrun ---------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict:
    """The environment of a test's child process: the repository and tests/ importable, one torch thread, and none of
    torchrun's variables (a test running under torchrun itself must not hand its rank to the child)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1", **extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def launch_cmd(procs: int, *args: str) -> list[str]:
    """``python ARGS`` for one process, ``torchrun --standalone --nproc-per-node=PROCS ARGS`` for several."""
    if procs == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *args]


def latest_weights(run_dir) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint a run directory's ``checkpoints/LATEST`` names."""
    ckpts = Path(run_dir) / "checkpoints"
    return load_file(str(ckpts / (ckpts / "LATEST").read_text().strip() / "model.safetensors"))
