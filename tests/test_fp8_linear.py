"""FP8Linear: DeepSeek's three FP8 GEMMs, checked two ways.

1. Exactly what was specified: each of y, dx, dW equals the float64 product of the *quantised*
   operands with DeepSeek's tilings (Fprop x 1×128 · W 128×128; Dgrad dy 1×128 · W 128×128;
   Wgrad dy, x in 128×1 tiles) to max-relative 1e-6 — the only difference is fp32 accumulation.
2. Close to full precision: vs nn.Linear in fp32, normwise relative error ≤ 5% for y, dx and dW
   (E4M3 rounds each operand with relative error ≤ 2^-4, RMS about 2.6% for random data, so a
   product of two quantised operands lands near 3.6%), gradient cosine similarity ≥ 0.998, and the
   bias gradient (never quantised) exact.
"""

import pytest
import torch
from torch import nn

from dslearn.config import ModelConfig
from dslearn.fp8 import reference as ref
from dslearn.fp8.linear import FP8Linear, fp8_linear
from dslearn.model import LINEARS, CausalLM
from dslearn.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def fq(x, tile):
    """Quantise-dequantise in float64 (exact)."""
    q, s = ref.quantize_blocks(x.float(), tile)
    return ref.dequantize_blocks(q, s, tile, torch.float64)


def run_layer(layer, x, dy):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(dy)
    return y, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("K,N,shape", [(128, 256, (4, 64)), (200, 130, (3, 50)), (384, 128, (2, 5, 40))])
def test_gemms_use_deepseek_tilings_exactly(K, N, shape):
    g = torch.Generator().manual_seed(K + N)
    layer = FP8Linear(K, N, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(N, K, generator=g) * 0.05)
    x = torch.randn(*shape, K, generator=g)
    dy = torch.randn(*shape, N, generator=g)
    y, dx, dw, db = run_layer(layer, x, dy)
    x2, dy2 = x.reshape(-1, K), dy.reshape(-1, N)
    w_hat = fq(layer.weight.detach(), ref.TILE_WEIGHT)  # (N, K)
    y_want = fq(x2, ref.TILE_ACT) @ w_hat.T + layer.bias.double()  # Fprop
    dx_want = fq(dy2, ref.TILE_ACT) @ w_hat  # Dgrad
    dw_want = fq(dy2, ref.TILE_WGRAD).T @ fq(x2, ref.TILE_WGRAD)  # Wgrad: 128×1 tiles along tokens
    assert max_rel(y.reshape(-1, N), y_want) < 1e-6
    assert max_rel(dx.reshape(-1, K), dx_want) < 1e-6
    assert max_rel(dw, dw_want) < 1e-6
    assert torch.equal(db, dy2.sum(0))
    # and the check is sharp: the wrong tiling for Wgrad (1×128 along channels) is far off
    wrong = fq(dy2, ref.TILE_ACT).T @ fq(x2, ref.TILE_ACT)
    assert max_rel(wrong, dw_want) > 1e-4


def test_forward_and_gradients_close_to_fp32():
    torch.manual_seed(0)
    fp8 = FP8Linear(256, 384, bias=True)
    full = nn.Linear(256, 384, bias=True)
    full.load_state_dict(fp8.state_dict())
    x, dy = torch.randn(4, 64, 256), torch.randn(4, 64, 384)
    got, want = run_layer(fp8, x, dy), run_layer(full, x, dy)
    for name, a, b in zip(("y", "dx", "dW"), got[:3], want[:3]):
        rel = ((a - b).norm() / b.norm()).item()
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        assert rel <= 0.05 and cos >= 0.998, f"{name}: normwise relative error {rel:.4f}, cosine {cos:.5f}"
    torch.testing.assert_close(got[3], want[3])  # bias gradient: not quantised


def test_is_a_drop_in_nn_linear():
    layer = FP8Linear(128, 256, bias=False)
    assert isinstance(layer, nn.Linear) and layer.bias is None and layer.weight.dtype == torch.float32
    assert list(layer.state_dict()) == list(nn.Linear(128, 256, bias=False).state_dict())
    assert "fp8=e4m3" in repr(layer)
    frozen = FP8Linear(128, 128)
    frozen.weight.requires_grad_(False)
    x = torch.randn(3, 128, requires_grad=True)
    frozen(x).sum().backward()
    assert frozen.weight.grad is None and x.grad is not None
    with pytest.raises(ValueError, match="features but weight is"):
        fp8_linear(torch.randn(2, 100), layer.weight)


def test_bf16_autocast_inputs():
    layer = FP8Linear(128, 128)
    x = torch.randn(8, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = nn.functional.silu(x.to(torch.bfloat16))
        y = layer(h)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and layer.weight.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_model_switch_puts_fp8_in_every_projection_but_the_head(text_streams):
    cfg = ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=64, linear_impl="fp8")
    assert LINEARS[cfg.linear_impl] is FP8Linear
    model = CausalLM(cfg, seed=0)
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert kinds.pop("lm_head") is nn.Linear  # output head stays in full precision (as in DeepSeek-V3)
    assert len(kinds) == 2 * 7 and set(kinds.values()) == {FP8Linear}
    # same weights in full precision: logits agree to FP8 accuracy
    full = CausalLM(cfg.replace(linear_impl="torch"), seed=0)
    assert all(type(m) is nn.Linear for m in full.modules() if isinstance(m, nn.Linear))
    x = text_streams[0].batch(0, 4, 64)[0]
    a, b = model(x).logits, full(x).logits
    assert ((a - b).norm() / b.norm()).item() < 0.05
    # and it trains
    train, val = text_streams
    tc = TrainConfig(steps=15, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=3, eval_every=0, eval_windows=2,
                     progress=False)
    result = Trainer(model, tc, train, val).fit()
    assert sum(result.losses[-3:]) / 3 < result.losses[0] - 1.0, result.losses
