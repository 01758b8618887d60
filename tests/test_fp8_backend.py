"""Dispatch and the Triton-missing fallback. Nothing here needs Triton: absence is simulated, both by
monkeypatching the availability flag and, in a fresh process, by making ``import triton`` fail."""

import subprocess
import sys

import pytest
import torch

from dslearn.fp8 import backend as be
from dslearn.fp8 import reference as ref
from dslearn.fp8.linear import FP8Linear

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setattr(be, "TRITON_AVAILABLE", False)


def test_auto_falls_back_to_torch_without_triton(no_triton):
    assert be.resolve_backend("auto", "cpu") == "torch"
    assert be.resolve_backend("auto", "cuda") == "torch"  # even for GPU tensors
    x = torch.randn(5, 300)
    q, s = be.quantize_act(x)
    q0, s0 = ref.quantize_blocks(x)
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)
    layer = FP8Linear(300, 7)
    layer(x).sum().backward()
    assert layer.weight.grad.shape == (7, 300)


def test_explicit_triton_backends_raise_without_triton(no_triton):
    for name in ("interpret", "triton"):
        with pytest.raises(be.BackendError, match="needs Triton, which is not installed"):
            be.resolve_backend(name, "cpu")
    with pytest.raises(be.BackendError, match="Triton is not installed"):
        be.load_kernels(True)
    with pytest.raises(be.BackendError):
        FP8Linear(128, 128, backend="interpret")(torch.randn(2, 128))


def test_backend_validation():
    with pytest.raises(ValueError, match="backend must be one of"):
        be.resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        FP8Linear(4, 4, backend="gpu")
    with pytest.raises(ValueError, match="tile must be one of"):
        be.quantize(torch.randn(4, 4), (2, 2))
    assert be.resolve_backend("torch", "cpu") == "torch"


def test_package_imports_and_trains_when_triton_cannot_be_imported():
    code = """
import sys
sys.modules['triton'] = None  # any `import triton` now raises ImportError
import torch
import dslearn.fp8 as fp8
from dslearn.fp8 import backend as be
from dslearn.config import ModelConfig
from dslearn.model.transformer import CausalLM
assert not be.TRITON_AVAILABLE
cfg = ModelConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=16, linear_impl='fp8')
model = CausalLM(cfg)
x = torch.randint(0, 256, (2, 16))
model(x, x).loss.backward()
try:
    fp8.quantize(torch.randn(2, 128), backend='interpret')
    raise SystemExit('no error')
except be.BackendError:
    pass
assert 'dslearn.fp8.kernels' not in sys.modules
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
