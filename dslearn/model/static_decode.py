"""A fast decode step: fixed shapes, preallocated caches, and one compiled graph for the whole model.

Cached decoding (``dslearn.generate``) feeds one token per row per step. At the course's sizes that step does
little arithmetic — the small preset's ~10 MFLOP per token — yet eager PyTorch pays a Python call and a kernel
dispatch for each of the ~300 operations of a 6-layer forward, and the batch-1 matrix products run as
general GEMMs that pack their weight operand. Per-step overhead, not arithmetic, bounds the speed.

The fast path removes it in two moves, and keeps the eager forward as the one definition of the model:

1. **Static shapes.** ``CausalLM.new_decode_state(..., static=True)`` returns a ``StaticDecodeState``: the
   caches (``StaticKVCache`` for MHA/GQA/MQA, ``StaticLatentKVCache`` for MLA) are written with
   ``index_copy_`` at a position held in a 0-d tensor and read back whole, with the key mask hiding what is
   not written yet. Every tensor keeps its shape from step to step; nothing is allocated in Python per step.
2. **One compiled graph.** ``torch.compile`` traces ``CausalLM.forward`` itself (the same code the eager path
   runs — no second copy of the model) over that state, once per model and batch shape, and fuses the norms,
   rotations, masks and softmaxes into a handful of C++ loops; batch-1 matrix-vector products are lowered to
   vectorised multiply-and-reduce loops that stream the weights instead of packing them
   (``decompose_mm_pass``). Where ``torch.compile`` is unavailable (no C++ compiler, an unsupported
   platform) or fails on a model, the step runs eagerly on the same static state, with a warning.

Speculative decoding (``dslearn.speculative``, ``decode="static" | "compiled"``) runs its two passes the same
way: the main model's verify pass over [x_n, d_1..d_m] (m+1 ≤ D+1 positions, so at most D+1 graphs) and each
MTP depth's drafting pass on a static state of its own. Rolling back rejected drafts is ``truncate`` between
steps, which a static state supports as it is (the caches zero the dropped rows, the mask hides them, the
position tensor is set back).

Identical tokens. The compiled graph computes the same function in another floating-point summation order
(fused reductions), so logits differ from the eager path's by ~1e-7 relative in float32: tokens are the same
except where two candidates tie to that precision. The tests run float64 models, where no tie is that close,
and require identical tokens for greedy and seeded sampling, MHA, GQA, MLA (naive and absorbed), MoE, ragged
batches and stop sequences; ``bench/generate_vs_hf.py`` checks float32 tokens on the small preset.

    idea                                   code
    ----                                   ----
    preallocated caches, tensor position    StaticDecodeState (model/state.py), Static*Cache (attention/)
    one compiled step per model             decode_step(model) → DecodeStep; DecodeStep(ids, state) → logits
    speculative decoding's verify / draft   decode_step(model, kind="verify" | "draft") (``dslearn.speculative``)
    eager fallback                          DecodeStep.compiled is False (compile_available(), or a failure)
"""

from __future__ import annotations

import shutil
import warnings
import weakref

import torch

# Inductor options of the compiled step: batch-1 products as streaming multiply-reduce loops (see above).
COMPILE_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}
# model → {(compile, backend, kind, dtype, device): DecodeStep}
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_available() -> bool:
    """Whether ``torch.compile`` can build CPU/GPU code here: dynamo supports this Python, and a C++ compiler
    is on PATH (Inductor's CPU backend writes C++)."""
    try:
        if not torch._dynamo.is_dynamo_supported():  # torch loads torch._dynamo on first attribute access
            return False
    except Exception:  # noqa: BLE001 — any failure to load it means: not available
        return False
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def static_supported(model) -> bool:
    """Whether every layer's cache has a static version (the adaptive-cache experiment's evicting caches do not)."""
    return all(getattr(layer.self_attn, "cache_factory", None) is None for layer in model.model.layers)


def _forward_last(model, ids: torch.Tensor, state) -> torch.Tensor:
    """The decode step: the model's own forward over one chunk, logits of its last position (B, V)."""
    return model(ids, state=state, last_only=True).logits[:, -1]


def _forward_verify(model, ids: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative decoding's verify pass: the model's forward over [x_n, d_1..d_m], the logits of EVERY position
    (B, T, V) and the hidden states h^0 before the final norm (B, T, d) that the MTP depths read next."""
    out = model(ids, state=state, return_hidden=True)
    return out.logits, out.hidden


def _draft(model, ids: torch.Tensor, state, k: int, h_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative decoding's drafting pass of MTP depth k over a chunk of its positions, continuing its own
    (static) state: h^k (B, T, d) and depth k's logits at the last position (B, V)."""
    h = model.mtp.draft(k, h_prev, model.model.embed_tokens(ids), state, model.prepare)  # (B, T, d)
    return h, model.mtp.logits(k, h[:, -1], model.lm_head)


# what a step computes (decode_step's ``kind``): plain decoding, and speculative decoding's two passes
STEP_KINDS = {"last": _forward_last, "verify": _forward_verify, "draft": _draft}


class DecodeStep:
    """``step(ids, state) -> logits (B, V)``: feed ``ids`` (B, T) through ``model`` continuing a
    ``StaticDecodeState``, compiled when ``compile`` is true and torch.compile works, eager otherwise.
    ``backend`` is torch.compile's ("inductor" generates the fused code; the tests also trace with "aot_eager").
    ``kind`` picks what the step computes (``STEP_KINDS``): "last" as above; "verify" returns (logits (B, T, V),
    hidden (B, T, d)); "draft" is ``step(ids, mtp_state, k, h_prev) -> (h^k, logits (B, V))`` for MTP depth k."""

    def __init__(self, model, compile: bool = True, backend="inductor", kind: str = "last"):
        if kind not in STEP_KINDS:
            raise ValueError(f"kind must be one of {sorted(STEP_KINDS)}, got {kind!r}")
        self._model = weakref.ref(model)  # the cache of steps is keyed by the model: hold it weakly
        self.compiled = bool(compile) and compile_available()
        self._eager = STEP_KINDS[kind]
        options = COMPILE_OPTIONS if backend == "inductor" else None
        # one graph per batch and cache shape (generate keeps them few: powers of two, cache lengths in buckets)
        self._fn = (torch.compile(self._eager, backend=backend, dynamic=False, options=options,
                                  isolate_recompiles=True, recompile_limit=64) if self.compiled else self._eager)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, state, *args):
        if not getattr(state, "static", False):
            raise TypeError("DecodeStep continues a StaticDecodeState: make it with "
                            "model.new_decode_state(batch, max_len, static=True)")
        T, filled = ids.shape[1], state.length
        if filled + T > state.max_len:
            raise ValueError(f"decode state holds {state.max_len} positions; {filled + T} needed")
        if self.compiled:
            try:
                return self._fn(self._model(), ids, state, *args)
            except Exception as e:  # noqa: BLE001 — compilation failed: the eager step computes the same
                warnings.warn(f"torch.compile failed on this model ({type(e).__name__}: {str(e)[:200]}); "
                              "decoding eagerly with static shapes", RuntimeWarning, stacklevel=2)
                self.compiled, self._fn = False, self._eager
                state.truncate(filled)  # undo anything a partial run wrote
        return self._fn(self._model(), ids, state, *args)


def decode_step(model, compile: bool = True, backend="inductor", kind: str = "last") -> DecodeStep:
    """The model's DecodeStep of ``kind``, built once per model, dtype, device and backend (compiling is the
    costly part: the graphs are kept as long as the model lives)."""
    p = model.lm_head.weight
    key = (bool(compile), backend, kind, p.dtype, p.device)
    steps = _STEPS.setdefault(model, {})
    if key not in steps:
        steps[key] = DecodeStep(model, compile, backend, kind)
    return steps[key]
