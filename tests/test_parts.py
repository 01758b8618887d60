"""The assembly seams: every implementation is chosen from the config in one place, auxiliary losses are
collected from the modules that own them, and the choices compose (FP8 experts, FP8 with the B/W split)."""

import pytest
import torch
from torch import nn

from dslearn import config as C
from dslearn.attention import ATTENTION_CLASSES, MLA_PATHS
from dslearn.config import ConfigError, ModelConfig
from dslearn.fp8 import FP8Linear
from dslearn.layers import SplitLinear, WeightGradStore
from dslearn.model import LINEARS, CausalLM, choose_parts, with_config
from dslearn.moe import DeepSeekMoE
from dslearn.moe.dispatch import DISPATCH

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def _moe(**kw) -> ModelConfig:
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                n_shared_experts=1, first_k_dense_replace=1, scoring_func="sigmoid", topk_method="noaux_tc",
                norm_topk_prob=True, seq_aux_loss_alpha=0.01)
    return ModelConfig(**(base | kw))


def test_every_value_the_config_accepts_has_an_implementation():
    assert set(LINEARS) == set(C.LINEAR_IMPLS)
    assert set(ATTENTION_CLASSES) == set(C.ATTENTION_TYPES)
    assert set(DISPATCH) == set(C.MOE_IMPLS)
    assert set(MLA_PATHS) == {"naive", "absorbed"}
    for impl in C.MOE_IMPLS:
        for linear in C.LINEAR_IMPLS:  # every combination builds and runs
            cfg = _moe(moe_impl=impl, linear_impl=linear, fp8_backend="torch")
            out = CausalLM(cfg)(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
            assert torch.isfinite(out.loss)


def test_choose_parts_refuses_a_value_without_implementation():
    cfg = _moe()
    object.__setattr__(cfg, "linear_impl", "int4")  # bypassing validation, as a stale config file could
    with pytest.raises(ConfigError, match="linear_impl='int4' has no implementation"):
        choose_parts(cfg)


def test_aux_loss_is_collected_from_its_owners_with_and_without_targets():
    model = CausalLM(_moe())
    ids = torch.randint(0, 64, (2, 8))
    out = model(ids)  # training mode, no targets: the aux loss still comes back (GRPO adds it to its own loss)
    assert out.loss is None and out.aux_loss is not None and out.aux_loss.item() > 0
    with_targets = model(ids, ids)
    assert with_targets.loss.item() == pytest.approx(with_targets.metrics["ce_loss"] + with_targets.aux_loss.item())
    model.eval()
    assert model(ids).aux_loss is None  # validation: pure cross-entropy
    dense = CausalLM(_moe(n_routed_experts=None))
    assert dense(ids).aux_loss is None and dense(ids, ids).metrics == {}


def test_a_new_auxiliary_owner_needs_no_change_in_the_model():
    """The protocol MTP will use: a module class with ``collect_auxiliary`` is found and summed in."""

    class Extra(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(2.0))

        @staticmethod
        def collect_auxiliary(members):
            return sum(m.w ** 2 for m in members), {"extra/n": float(len(members))}

    model = CausalLM(_moe())
    ids = torch.randint(0, 64, (2, 8))
    before = model(ids, ids)
    model.extra = nn.ModuleList([Extra(), Extra()])
    after = model(ids, ids)
    assert after.metrics["extra/n"] == 2.0
    assert after.aux_loss.item() == pytest.approx(before.aux_loss.item() + 8.0, rel=1e-6)


def test_fp8_reaches_the_routed_experts():
    cfg = _moe(linear_impl="fp8", fp8_backend="torch")
    model = CausalLM(cfg, seed=0)
    ref = CausalLM(cfg.replace(linear_impl="torch"), seed=0)
    assert all(type(m) is FP8Linear for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    ids = torch.randint(0, 64, (4, 16))
    a, b = model(ids).logits, ref(ids).logits
    assert 0 < ((a - b).norm() / b.norm()).item() < 0.05  # FP8 everywhere, experts included: close, not equal
    moe = model.model.layers[1].mlp
    # the expert GEMMs really are FP8: swapping them for torch's changes the output
    layer_x = torch.randn(2, 8, 32)
    fp8_out = moe(layer_x)
    moe_ref = ref.model.layers[1].mlp
    assert not torch.allclose(fp8_out, moe_ref(layer_x))
    model(ids, ids).loss.backward()
    assert moe.experts.gate_up_proj.grad.abs().sum() > 0


@pytest.mark.parametrize("linear_impl", ["torch", "fp8"])
def test_the_weight_gradient_split_composes_with_every_linear(linear_impl):
    """DualPipe's B/W split is chosen at construction for torch and FP8 Linear layers alike: during B no
    Linear weight gets a gradient, and running the queued W gives exactly the ordinary gradients."""
    cfg = _moe(linear_impl=linear_impl, fp8_backend="torch")
    store = WeightGradStore()
    split = CausalLM(cfg, seed=0, parts=choose_parts(cfg, weight_grads=store))
    plain = CausalLM(cfg, seed=0)
    kinds = {type(m) for n, m in split.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    assert kinds == ({SplitLinear} if linear_impl == "torch" else {FP8Linear})
    ids, tg = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    store.deferring = True
    split(ids, tg).loss.backward()
    store.deferring = False
    deferred = [n for n, m in split.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert all(split.get_submodule(n).weight.grad is None for n in deferred) and store.queue
    for fn in store.take():
        fn()
    plain(ids, tg).loss.backward()
    for (n, p), q in zip(split.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_with_config_switches_an_implementation_and_keeps_the_weights():
    cfg = _moe(moe_impl="grouped")
    model = CausalLM(cfg, seed=3).eval()
    loop = with_config(model, moe_impl="loop")
    assert loop.config.moe_impl == "loop" and not loop.training
    ids = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(loop(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(loop.state_dict().values(), model.state_dict().values()))
    assert isinstance(loop.model.layers[1].mlp, DeepSeekMoE)


def test_a_checkpoint_loads_into_another_implementation_but_resumes_only_into_the_same(tmp_path):
    from dslearn.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    cfg = _moe(attention_type="mla", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)
    model = CausalLM(cfg, seed=1)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, model, opt, 3, {})
    absorbed = CausalLM(cfg.replace(mla_impl="absorbed", moe_impl="loop"), seed=2)
    load_checkpoint(tmp_path, absorbed)  # weights only: any implementation of the same weights
    assert all(torch.equal(a, b) for a, b in zip(absorbed.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="mla_impl"):  # resuming training must compute what it computed
        load_checkpoint(tmp_path, absorbed, torch.optim.AdamW(absorbed.parameters()))
    with pytest.raises(CheckpointError, match="kv_lora_rank"):
        load_checkpoint(tmp_path, CausalLM(cfg.replace(kv_lora_rank=32)))
