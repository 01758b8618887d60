"""Plain cached greedy decoding vs self-speculative greedy decoding (MTP drafts, one verify pass), batch 1.

    python bench/mtp_decode.py [--model experiments/mtp/model_d1] [--train-steps 300] [--prompts 8]
                               [--new-tokens 128] [--reps 3] [--threads 1]

One run, one model, the same held-out prompts: tokens/s of both decoders and their ratio, the acceptance
rate α of the drafted token, the tokens per verify step measured against ``expected_tokens_per_step(α)``
(= 1 + α for D = 1), and what bounds the speed-up: the cost of one main forward over 2 positions vs 1, of
one drafting pass, and of a whole speculative step vs a plain one. Then

    speed-up ≈ (tokens per verify step) × (time of a plain step) / (time of a speculative step)

is printed next to the measured ratio. The model is the chapter's trained D = 1 model when ``--model``
exists (written by ``dslearn.export.to_hf``), otherwise a small D = 1 model trained here for
``--train-steps`` steps on the embedded corpus, so the bench always runs. Both decoders must produce the
same tokens (checked). Rounds alternate between them so machine noise hits both alike; medians reported.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

from dslearn.config import get_preset
from dslearn.data import TokenStream, load_corpus
from dslearn.export import from_hf
from dslearn.generate import generate
from dslearn.model import CausalLM
from dslearn.speculative import expected_tokens_per_step, speculative_generate
from dslearn.train import TrainConfig, Trainer


def load_or_train(path: Path, steps: int, corpus) -> tuple[CausalLM, str]:
    if path.exists():
        return from_hf(path), f"loaded {path}"
    cfg = get_preset("tiny").replace(num_nextn_predict_layers=1)
    model = CausalLM(cfg)
    Trainer(model, TrainConfig(steps=steps, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=20, eval_every=0,
                               eval_windows=8, progress=False),
            TokenStream(corpus.train, "train")).fit()
    return model, f"{path} not found: trained the 'tiny' preset with D = 1 for {steps} steps here"


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def forward_costs(model: CausalLM, prompt: list[int], reps: int = 200) -> dict:
    """Seconds for one main forward of 1 and of 2 positions on a filled cache, and one D = 1 drafting pass
    (1 and 2 positions: after a rejection / an acceptance), each rolled back so the context stays fixed."""
    n = len(prompt)
    state = model.new_decode_state(1, n + 4)
    out = model(torch.tensor([prompt]), state=state, return_hidden=True)
    mtp_state = model.mtp.new_decode_state(1, n + 4)[0]  # depth 1's
    model.mtp.draft(1, out.hidden[:, :-1], model.model.embed_tokens(torch.tensor([prompt[1:]])), mtp_state,
                    model.prepare)
    def main_step(ids):
        model(ids, state=state, return_hidden=True)
        state.truncate(n)

    def draft_step(h, emb):
        model.mtp.logits(1, model.mtp.draft(1, h, emb, mtp_state, model.prepare)[0, -1], model.lm_head)
        mtp_state.truncate(n - 1)

    costs = {}
    for t in (1, 2):
        ids = torch.tensor([prompt[:t]])
        main_t = functools.partial(main_step, ids)
        draft_t = functools.partial(draft_step, out.hidden[:, :t], model.model.embed_tokens(ids))
        main_t(), draft_t()  # warm-up
        costs[f"main{t}"] = median_time(main_t, reps)
        costs[f"draft{t}"] = median_time(draft_t, reps)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="experiments/mtp/model_d1")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus()
    model, origin = load_or_train(Path(args.model), args.train_steps, corpus)
    model.eval()
    cfg = model.config
    if args.prompt_len + args.new_tokens > cfg.max_position_embeddings:
        raise SystemExit(f"--prompt-len + --new-tokens must fit the context ({cfg.max_position_embeddings})")
    val = corpus.val
    stride = (len(val) - args.prompt_len) // args.prompts
    prompts = [list(val[i * stride:i * stride + args.prompt_len]) for i in range(args.prompts)]
    print(f"{origin}\nD = {cfg.num_nextn_predict_layers}, {model.num_parameters(mtp=False):,} main-model parameters "
          f"(+{model.num_parameters() - model.num_parameters(mtp=False):,} MTP), {cfg.num_hidden_layers} layers, "
          f"attention {cfg.attention_type}; torch threads {torch.get_num_threads()}; {args.prompts} held-out prompts "
          f"of {args.prompt_len} bytes, {args.new_tokens} new tokens each, batch 1, greedy\n")

    times = {"plain": [], "spec": []}
    results = []
    same = True
    for _ in range(args.reps):
        t_plain = t_spec = 0.0
        results = []
        for prompt in prompts:
            t0 = time.perf_counter()
            plain = generate(model, [prompt], args.new_tokens, temperature=0.0)[0].tokens
            t1 = time.perf_counter()
            spec = speculative_generate(model, prompt, args.new_tokens)
            t2 = time.perf_counter()
            t_plain, t_spec = t_plain + t1 - t0, t_spec + t2 - t1
            same &= spec.tokens == plain
            results.append(spec)
        times["plain"].append(t_plain)
        times["spec"].append(t_spec)
    n_tokens = args.prompts * args.new_tokens
    plain_tps, spec_tps = n_tokens / statistics.median(times["plain"]), n_tokens / statistics.median(times["spec"])
    drafted, accepted = sum(r.drafted for r in results), sum(r.accepted for r in results)
    steps = sum(r.verify_steps for r in results)
    alpha = accepted / drafted
    per_step = (n_tokens - args.prompts) / steps  # the first token of each prompt comes from the prefill
    expected = expected_tokens_per_step(alpha, cfg.num_nextn_predict_layers)
    print(f"{'decoder':<22} {'tokens/s':>9}")
    print(f"{'plain cached greedy':<22} {plain_tps:>9,.0f}")
    print(f"{'self-speculative':<22} {spec_tps:>9,.0f}")
    print(f"RATIO (speculative / plain tokens/s): {spec_tps / plain_tps:.2f}×   same tokens: {same}\n")
    print(f"acceptance rate of the drafted token α = {accepted}/{drafted} = {alpha:.3f}")
    print(f"tokens per verify step: measured {per_step:.3f}, model expected_tokens_per_step(α) = {expected:.3f}\n")

    costs = forward_costs(model, prompts[0] + results[0].tokens[:args.new_tokens // 2])
    plain_step = statistics.median(times["plain"]) / n_tokens
    spec_step = statistics.median(times["spec"]) / steps
    print("per-step costs (ms), context ≈ prompt + half the new tokens:")
    print(f"  main forward, 1 position   {1e3 * costs['main1']:.3f}")
    print(f"  main forward, 2 positions  {1e3 * costs['main2']:.3f}   (× {costs['main2'] / costs['main1']:.2f} of 1)")
    print(f"  MTP draft, 1 / 2 positions {1e3 * costs['draft1']:.3f} / {1e3 * costs['draft2']:.3f}")
    print(f"  whole plain step           {1e3 * plain_step:.3f}   (generate: forward + sampling + bookkeeping)")
    print(f"  whole speculative step     {1e3 * spec_step:.3f}   (verify + draft + accept + roll back)")
    bound = per_step * plain_step / spec_step
    ideal = expected_tokens_per_step(alpha, cfg.num_nextn_predict_layers) * costs["main1"] / costs["main2"]
    print(f"\nspeed-up model: {per_step:.2f} tokens/step × {1e3 * plain_step:.3f} / {1e3 * spec_step:.3f} ms "
          f"= {bound:.2f}× (measured {spec_tps / plain_tps:.2f}×)")
    print(f"bound with free drafting and bookkeeping: (1 + α) × main1/main2 = {ideal:.2f}×; "
          f"with perfect drafts (α = 1): {2 * costs['main1'] / costs['main2']:.2f}×")


if __name__ == "__main__":
    main()
