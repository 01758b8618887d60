"""MoE layer forward+backward throughput: dslearn's loop reference, dslearn's grouped dispatch, and
Hugging Face's DeepseekV3MoE (each of its experts implementations), same config, same weights.

    python bench/moe_dispatch.py [--tokens 2048] [--hidden 256] [--experts 32] [--top-k 4]
                                 [--inter 64] [--reps 7] [--threads 1] [--json out.json] [--hf-batched]

Every variant first has its output checked against dslearn's loop reference on the same input.
A round times each variant once (a few forward+backward passes after a warm-up), rounds alternate
so machine noise hits all variants alike, and the median round is reported as tokens/s together
with each variant's speed relative to dslearn's fast path.

HF's ``batched_mm`` experts gather one weight matrix per (token, expert) assignment (about 1 GB at
the default size, ~60x slower than the others on CPU); it runs only with ``--hf-batched``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dslearn.config import ModelConfig
from dslearn.moe import DeepSeekMoE


def make_config(a) -> ModelConfig:
    return ModelConfig(vocab_size=256, hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=1,
                       num_attention_heads=4, n_routed_experts=a.experts, num_experts_per_tok=a.top_k,
                       moe_intermediate_size=a.inter, n_shared_experts=1, n_group=4, topk_group=2,
                       scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=2.5)


def hf_variants(cfg: ModelConfig, state: dict, impls=("eager", "grouped_mm")) -> dict:
    try:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    except ImportError:
        print("transformers is not installed: Hugging Face's DeepseekV3MoE is left out")
        return {}
    out = {}
    for impl in impls:
        hc = DeepseekV3Config(hidden_size=cfg.hidden_size, n_routed_experts=cfg.n_routed_experts,
                              n_shared_experts=cfg.n_shared_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                              moe_intermediate_size=cfg.moe_intermediate_size, n_group=cfg.n_group,
                              topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
                              norm_topk_prob=True)
        hc._experts_implementation = impl
        m = DeepseekV3MoE(hc)
        m.load_state_dict(state, strict=True)
        out[f"hf_{impl}"] = m
    return out


def time_variant(module, x, g, passes: int) -> float:
    """Seconds for ``passes`` forward+backward passes."""
    t0 = time.perf_counter()
    for _ in range(passes):
        xi = x.detach().requires_grad_()
        module(xi).backward(g)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--inter", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--hf-batched", action="store_true", help="also time HF's batched_mm experts (slow, ~1 GB)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = make_config(a)
    g = torch.Generator().manual_seed(0)
    ref = DeepSeekMoE(cfg.replace(moe_impl="loop")).eval()  # eval: no aux loss, no bias accumulation
    with torch.no_grad():
        for prm in ref.parameters():
            prm.normal_(0.0, 0.1, generator=g)
        ref.gate.e_score_correction_bias.normal_(0.0, 0.02, generator=g)
    fast = DeepSeekMoE(cfg).eval()
    fast.load_state_dict(ref.state_dict())
    hf_impls = ("eager", "grouped_mm", "batched_mm") if a.hf_batched else ("eager", "grouped_mm")
    variants = {"dslearn_loop": ref, "dslearn_grouped": fast, **hf_variants(cfg, ref.state_dict(), hf_impls)}
    x = torch.randn(1, a.tokens, cfg.hidden_size, generator=g)
    grad = torch.randn(1, a.tokens, cfg.hidden_size, generator=g)
    with torch.no_grad():
        expected = ref(x)
        for name, m in variants.items():
            torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")
    for m in variants.values():  # warm-up
        time_variant(m, x, grad, 1)
    times = {name: [] for name in variants}
    for _ in range(a.reps):
        for name, m in variants.items():
            times[name].append(time_variant(m, x, grad, a.passes))
    tps = {name: a.passes * a.tokens / statistics.median(t) for name, t in times.items()}
    base = tps["dslearn_grouped"]
    best_other = max((v, k) for k, v in tps.items() if k != "dslearn_grouped")
    print(f"MoE layer fwd+bwd, fp32, {a.threads} thread(s): {a.tokens} tokens, d={cfg.hidden_size}, "
          f"N_r={cfg.n_routed_experts} (K_r={cfg.num_experts_per_tok}, I={cfg.moe_intermediate_size}), N_s=1, "
          f"{cfg.n_group} groups top-{cfg.topk_group}")
    print(f"{'variant':<18}{'tokens/s':>12}{'vs dslearn_grouped':>22}")
    for name, v in sorted(tps.items(), key=lambda kv: -kv[1]):
        print(f"{name:<18}{v:>12.0f}{v / base:>21.2f}x")
    print(f"dslearn_grouped / best other ({best_other[1]}): {base / best_other[0]:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "torch": torch.__version__, "tokens_per_s": tps,
                       "ratio_vs_dslearn_grouped": {k: v / base for k, v in tps.items()},
                       "grouped_vs_best_other": base / best_other[0], "best_other": best_other[1]}, f, indent=1)


if __name__ == "__main__":
    main()
