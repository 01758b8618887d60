"""Multi-token prediction (V3 §2.2): the module against a literal loop over depths, the shared embedding and
head, the λ schedule and its resume, accounting against a built model and V3's reported split, export."""

import pytest
import torch
import torch.nn.functional as F
from helpers import MLA, V3_GATING, perturbed_model

from dslearn.config import ConfigError, ModelConfig, get_preset
from dslearn.model import CausalLM
from dslearn.scaling import mtp_flops_per_token, mtp_parameter_counts, parameter_counts

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

DENSE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=32)
MOE = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
           first_k_dense_replace=1, n_group=2, topk_group=1)


def configs():
    return {"dense": ModelConfig(**DENSE, num_nextn_predict_layers=2),
            "mla+moe": ModelConfig(**(DENSE | MLA | MOE | V3_GATING), num_nextn_predict_layers=2)}


def literal_mtp_losses(model: CausalLM, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """V3 eq. 21–24 written out position by position: h'_i^k = M_k[RMSNorm(h_i^{k−1}); RMSNorm(Emb(t_{i+k}))],
    the block over positions 1..T−k, logits through the shared head, CE against t_{i+k+1}."""
    B, T = x.shape
    inputs = model.prepare(B, T, x.device)
    h = model.backbone(model.model.embed_tokens(x), inputs)  # h^0, before the final norm
    losses = []
    for k, depth in enumerate(model.mtp, start=1):
        n = T - k
        rows = []
        for i in range(n):  # one position at a time, for the concatenation and M_k
            e = model.model.embed_tokens(x[:, i + k])  # Emb(t_{i+k}) in the paper's 1-based terms
            rows.append(depth.eh_proj(torch.cat([depth.hnorm(h[:, i]), depth.enorm(e)], -1)))
        h_prime = torch.stack(rows, 1)  # (B, n, d)
        sub = model.prepare(B, n, x.device)
        h = depth.block(h_prime, sub.rope, sub.attn_mask)
        logits = model.lm_head(depth.shared_head.norm(h))  # the main model's head, after the depth's own norm
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y[:, k:].reshape(-1)))
    return losses


@pytest.mark.parametrize("name", ["dense", "mla+moe"])
def test_mtp_loss_equals_a_literal_loop_over_depths(name):
    cfg = configs()[name]
    model = perturbed_model(cfg, seed=1)
    model.train()
    x, y = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
    out = model(x, y)
    expected = literal_mtp_losses(model, x, y)
    assert len(model.mtp.losses) == 2
    for got, ref in zip(model.mtp.losses, expected):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    lam = cfg.mtp_loss_weight
    mtp = lam / 2 * (expected[0] + expected[1])
    assert out.metrics["mtp/loss"] == pytest.approx(mtp.item(), rel=1e-5)
    moe_aux = sum(m.aux_loss for m in model.modules() if hasattr(m, "aux_loss") and m.aux_loss is not None)
    assert out.loss.item() == pytest.approx(out.metrics["ce_loss"] + mtp.item() + float(moe_aux), rel=1e-5)


def test_embedding_and_head_are_shared_one_tensor_each():
    model = CausalLM(configs()["dense"])
    names = {n for n, _ in model.named_parameters()}
    assert not any("embed" in n or n.endswith("head.weight") for n in names if n.startswith("mtp."))
    x, y = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
    out = model(x, y)
    (g_head,) = torch.autograd.grad(out.aux_loss, model.lm_head.weight, retain_graph=True)
    (g_emb,) = torch.autograd.grad(out.aux_loss, model.model.embed_tokens.weight, retain_graph=True)
    assert g_head.abs().sum() > 0 and g_emb.abs().sum() > 0  # MTP trains the main model's own head and embedding
    (g_main,) = torch.autograd.grad(out.aux_loss, model.model.layers[0].self_attn.q_proj.weight)
    assert g_main.abs().sum() > 0  # and its gradient reaches the main model's layers through h^0


def test_mtp_runs_only_in_training_and_leaves_logits_alone():
    cfg = configs()["dense"]
    model, plain = CausalLM(cfg, seed=0), CausalLM(cfg.replace(num_nextn_predict_layers=0), seed=0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")})
    x, y = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(model(x, y).logits, plain(x, y).logits)  # discarding MTP leaves the model
    model.eval()
    out = model(x, y)
    assert out.aux_loss is None and "mtp/loss" not in out.metrics  # validation: the main model's CE only
    with pytest.raises(ValueError, match="unpadded batches"):
        model.train()(x, y, attention_mask=torch.ones_like(x))


def test_lambda_schedule_switches_and_resumes(tmp_path):
    from dslearn.data import TokenStream
    from dslearn.train import TrainConfig, Trainer

    cfg = configs()["dense"].replace(mtp_loss_weight=0.3, mtp_loss_weight_final=0.1, mtp_weight_switch_step=2)
    text = bytes(range(64)) * 40
    train = TokenStream(bytes(b % 64 for b in text), "train")
    tcfg = TrainConfig(steps=3, batch_size=2, seq_len=16, progress=False, log_every=1, checkpoint_every=1)
    trainer = Trainer(CausalLM(cfg), tcfg, train, run_dir=tmp_path)
    trainer.fit()
    from dslearn.train import read_metrics

    lams = [r["mtp/lambda"] for r in read_metrics(tmp_path) if r.get("kind") == "train"]
    assert lams == [0.3, 0.3, 0.1]
    resumed = Trainer(CausalLM(cfg), tcfg, train, run_dir=tmp_path)
    resumed.loop.resume()
    assert resumed.model.mtp.optimizer_steps == 3  # the schedule's counter comes back with the checkpoint


def test_bad_mtp_configs_name_the_field():
    with pytest.raises(ConfigError, match="num_nextn_predict_layers"):
        ModelConfig(**DENSE, num_nextn_predict_layers=-1)
    with pytest.raises(ConfigError, match="mtp_loss_weight"):
        ModelConfig(**DENSE, num_nextn_predict_layers=1, mtp_loss_weight=float("nan"))
    with pytest.raises(ConfigError, match="mtp_weight_switch_step"):
        ModelConfig(**DENSE, num_nextn_predict_layers=1, mtp_weight_switch_step=-5)


def test_mtp_accounting_counts_what_is_built():
    for cfg in configs().values():
        model = CausalLM(cfg)
        built = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
        assert mtp_parameter_counts(cfg)["own"] == built, cfg.attention_type
        assert model.num_parameters() - model.num_parameters(mtp=False) == built


def test_v3_split_671b_main_and_14b_mtp_as_released():
    """V3's 671B excludes the MTP module; the release (685B) stores it with copies of embedding and head."""
    v3 = get_preset("deepseek-v3")
    main = parameter_counts(v3)["total"]
    mtp = mtp_parameter_counts(v3)
    assert round(main / 1e9) == 671
    assert 13.4e9 < mtp["stored"] < 14.5e9  # "14B of the MTP Module weights"
    assert round((main + mtp["stored"]) / 1e9) == 684  # the release's 685B: 684.5B, rounded by the report
    assert mtp["own"] < mtp["stored"] and 0 < mtp_flops_per_token(v3, 4096)


def test_mtp_weights_survive_export_and_import(tmp_path):
    from dslearn.export import from_hf, to_hf

    for name, cfg in configs().items():
        model = perturbed_model(cfg, seed=2)
        back = from_hf(to_hf(model, tmp_path / name))
        a, b = model.state_dict(), back.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_transformers_loads_an_mtp_model_and_ignores_the_mtp_layer(tmp_path):
    """HF's DeepseekV3 builds no MTP module: it must load the main model and give our logits (MTP discarded)."""
    transformers = pytest.importorskip("transformers")
    from dslearn.export import to_hf

    model = perturbed_model(configs()["mla+moe"], seed=3).eval()
    path = to_hf(model, tmp_path / "m")
    transformers.logging.set_verbosity_error()  # the MTP layer's keys are reported as unused: expected here
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        diff = (ref(ids).logits - model(ids).logits).abs().max().item()
    assert diff <= 1e-4
