"""SFTStream: prompt and padding targets masked exactly, batches a pure function of (seed, step), and SFT
trains through the same Trainer with a loss on responses only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dslearn.data import Batches, SFTStream, TokenStream
from dslearn.model import CausalLM
from dslearn.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

PAIRS = [("What is 2+3?\n", "<answer>5</answer>"), ("What is 7+8?\n", "<answer>15</answer>"),
         ("Hi\n", "hello"), ("Q\n", "a")]


def test_targets_are_masked_on_the_prompt_and_the_padding_exactly():
    x, y = SFTStream([("ab", "cd"), ([7], b"\x01")], pad_id=0).encode([0, 1], seq_len=5)
    a, b, c, d = (ord(ch) for ch in "abcd")
    assert x.tolist() == [[a, b, c, 0, 0], [7, 0, 0, 0, 0]]
    assert y.tolist() == [[-100, c, d, -100, -100], [1, -100, -100, -100, -100]]
    assert x.dtype == y.dtype == torch.long


def test_batches_are_a_pure_function_of_seed_and_step_and_cover_each_epoch():
    s = SFTStream(PAIRS)
    assert isinstance(s, Batches) and isinstance(TokenStream(b"abc"), Batches)
    one, again = s.batch(3, 2, 32, seed=1), s.batch(3, 2, 32, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(one, again))
    assert any(not torch.equal(s.batch(k, 2, 32, seed=2)[0], s.batch(k, 2, 32, seed=1)[0]) for k in range(4))
    epoch = torch.cat([s.batch(step, 2, 32)[0] for step in range(2)])  # steps 0–1 = epoch 0
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, s.encode(range(4), 32)[0].tolist()))


def test_bad_sft_data_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="example 1 needs seq_len >= 7"):
        SFTStream([("a", "b"), ("abcd", "efgh")]).check_fits(6)
    with pytest.raises(ValueError, match="empty response"):
        SFTStream([("a", "")])
    with pytest.raises(ValueError, match="no .* pairs"):
        SFTStream([])


def test_the_loss_ignores_prompt_tokens(tiny_config):
    """The step's loss is the cross-entropy over response tokens only (same value and gradient), and it
    differs from the loss over every position."""
    s = SFTStream(PAIRS)
    trainer = Trainer(CausalLM(tiny_config, seed=0), TrainConfig(steps=1, batch_size=4, seq_len=32, progress=False), s)
    x, y = s.batch(0, 4, 32)
    (loss, _), = next(iter(trainer.step_function(0).updates))
    logits = trainer.model(x).logits.float()
    response = y != -100
    assert response.sum() == sum(len(r.encode()) for _, r in PAIRS)  # one target per response token
    manual = F.cross_entropy(logits[response], y[response])
    torch.testing.assert_close(loss, manual)
    w = trainer.model.lm_head.weight
    torch.testing.assert_close(torch.autograd.grad(loss, w)[0], torch.autograd.grad(manual, w)[0])
    all_targets = torch.cat([x[:, 1:], y[:, -1:]], 1)  # next tokens at every position, prompt included
    assert abs(F.cross_entropy(logits.flatten(0, 1), all_targets.flatten(), ignore_index=-100).item()
               - manual.item()) > 1e-3


def test_sft_trains_through_the_trainer(tiny_config):
    s = SFTStream(PAIRS * 4)
    cfg = TrainConfig(steps=30, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=3, eval_every=0, eval_windows=8,
                      grad_accum_steps=2, progress=False)
    result = Trainer(CausalLM(tiny_config, seed=0), cfg, s, SFTStream(PAIRS)).fit()
    assert result.losses[-1] < 0.3 * result.losses[0]
    assert result.val[-1]["val_loss"] < 1.0
