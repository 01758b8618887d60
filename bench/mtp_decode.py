"""Plain cached greedy decoding vs self-speculative greedy decoding (MTP drafts, one verify pass), batch 1.

    python bench/mtp_decode.py [--model experiments/mtp/model_d1] [--train-steps 300] [--prompts 8]
                               [--new-tokens 128] [--reps 3] [--threads 1] [--decode compiled]

One run, one model, the same held-out prompts: tokens/s of both decoders and their ratio, the acceptance
rate α of the drafted token, the tokens per verify step measured against ``expected_tokens_per_step(α)``
(= 1 + α for D = 1), and what bounds the speed-up: the cost of one main forward over 2 positions vs 1, of
one drafting pass, and of a whole speculative step vs a plain one. Then

    speed-up ≈ (tokens per verify step) × (time of a plain step) / (time of a speculative step)

is printed next to the measured ratio. The model is the chapter's trained D = 1 model when ``--model``
exists (written by ``dslearn.export.to_hf``), otherwise a small D = 1 model trained here for
``--train-steps`` steps on the embedded corpus, so the bench always runs. Both decoders must produce the
same tokens (checked). Rounds alternate between them so machine noise hits both alike; medians reported.

``--decode static|compiled`` (default compiled; "none" skips it) also times speculative decoding on the fast
path (``speculative_generate(decode=...)``: verify and draft passes as static-shape steps, compiled by
torch.compile) in the same rounds, after one untimed warm-up pass that compiles its graphs, checks it gives the
eager tokens, and prints its ratio to the eager speculative decoder and to plain decoding.
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
def forward_costs(model: CausalLM, prompt: list[int], reps: int = 300) -> dict:
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

    calls = {}
    for t in (1, 2):
        ids = torch.tensor([prompt[:t]])
        calls[f"main{t}"] = functools.partial(main_step, ids)
        calls[f"draft{t}"] = functools.partial(draft_step, out.hidden[:, :t], model.model.embed_tokens(ids))
    times = {name: [] for name in calls}
    for _ in range(reps):  # interleaved, so machine noise hits every kind of call alike
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    costs = {name: statistics.median(ts) for name, ts in times.items()}
    return costs


@torch.no_grad()
def teacher_forced_agreement(model: CausalLM, val: bytes, windows: int = 16, seq_len: int = 128) -> tuple[float, float]:
    """On held-out text itself (not on the model's own continuations): how often depth 1's argmax for
    t_{i+2}, read from (h_i, t_{i+1}), equals the main model's argmax at position i+1 — the acceptance rate
    greedy decoding would see if it followed this text — and how often it equals the true t_{i+2}."""
    stride = (len(val) - seq_len - 1) // windows
    x = torch.tensor([list(val[i * stride:i * stride + seq_len + 1]) for i in range(windows)])  # (W, T+1)
    out = model(x[:, :-1], return_hidden=True)
    T = seq_len - 1
    inputs = model.prepare(windows, T, x.device)
    h1 = model.mtp[0](out.hidden[:, :T], model.model.embed_tokens(x[:, 1:seq_len]), inputs.rope, inputs.attn_mask)
    draft = model.mtp.logits(1, h1, model.lm_head).argmax(-1)  # (W, T): guesses for t_{i+2}
    main = out.logits[:, 1:].argmax(-1)  # (W, T): the main model's next token after t_{i+1}
    return float((draft == main).float().mean()), float((draft == x[:, 2:]).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "experiments/mtp/model_d1"))
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--decode", default="compiled", choices=["static", "compiled", "none"])
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

    fast = None if args.decode == "none" else args.decode
    times = {"plain": [], "spec": [], "fast": []}
    results = []
    same = same_fast = True
    if fast:  # warm-up: compile the verify and draft graphs (not timed)
        t0 = time.perf_counter()
        for prompt in prompts:
            speculative_generate(model, prompt, args.new_tokens, decode=fast)
        print(f"warm-up of the {fast} speculative path (compiling its graphs): {time.perf_counter() - t0:.1f} s")
    for _ in range(args.reps):
        t_plain = t_spec = t_fast = 0.0
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
            if fast:
                t3 = time.perf_counter()
                same_fast &= speculative_generate(model, prompt, args.new_tokens, decode=fast).tokens == spec.tokens
                t_fast += time.perf_counter() - t3
        times["plain"].append(t_plain)
        times["spec"].append(t_spec)
        times["fast"].append(t_fast)
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
    print(f"RATIO (speculative / plain tokens/s): {spec_tps / plain_tps:.2f}×   same tokens: {same}")
    if fast:
        fast_tps = n_tokens / statistics.median(times["fast"])
        print(f"{'speculative, ' + fast:<22} {fast_tps:>9,.0f}")
        print(f"RATIO ({fast} / eager speculative tokens/s): {fast_tps / spec_tps:.2f}×, ({fast} speculative / plain "
              f"eager): {fast_tps / plain_tps:.2f}×   same tokens as eager speculative: {same_fast}")
    print()
    print(f"acceptance rate of the drafted token α = {accepted}/{drafted} = {alpha:.3f}")
    print(f"tokens per verify step: measured {per_step:.3f}, model expected_tokens_per_step(α) = {expected:.3f}")
    agree, correct = teacher_forced_agreement(model, val)
    print(f"on held-out text itself (teacher-forced): draft = main model's argmax {agree:.3f} (the α greedy decoding "
          f"would see there; E = {expected_tokens_per_step(agree):.2f} tokens/step), draft = true token {correct:.3f}")
    print("  (the model's own greedy continuations are more repetitive than real text, hence the higher α above)\n")

    costs = forward_costs(model, prompts[0] + results[0].tokens[:args.new_tokens // 2])
    plain_step = statistics.median(times["plain"]) / n_tokens
    spec_step = statistics.median(times["spec"]) / steps
    print("per-step costs (ms, medians of interleaved calls), context ≈ prompt + half the new tokens:")
    c = {k: 1e3 * v for k, v in costs.items()}
    plain_step, spec_step = 1e3 * plain_step, 1e3 * spec_step
    draft = alpha * c["draft2"] + (1 - alpha) * c["draft1"]  # 2 positions after an acceptance, 1 after a rejection
    print(f"  main forward, 1 position    {c['main1']:.3f}")
    print(f"  main forward, 2 positions   {c['main2']:.3f}   (× {c['main2'] / c['main1']:.2f} of 1 position)")
    print(f"  MTP draft, 1 / 2 positions  {c['draft1']:.3f} / {c['draft2']:.3f}   "
          f"(× {draft / c['main1']:.2f} of a main forward at this α)")
    print(f"  whole plain step            {plain_step:.3f}   "
          f"(overhead beyond the forward: {plain_step - c['main1']:.3f})")
    print(f"  whole speculative step      {spec_step:.3f}   (overhead beyond verify + draft: "
          f"{spec_step - c['main2'] - draft:.3f})")
    model_ratio = per_step * plain_step / spec_step
    print(f"\nspeed-up = tokens/step × plain step / speculative step = {per_step:.2f} × {plain_step:.3f} / "
          f"{spec_step:.3f} = {model_ratio:.2f}×   (measured {spec_tps / plain_tps:.2f}×)")
    perfect = 2 * plain_step / (spec_step - draft + c["draft2"])
    free = per_step * plain_step / (c["main2"] + plain_step - c["main1"])
    print(f"what bounds it: with α = 1 and these costs {perfect:.2f}×; with free drafting (verify + plain "
          f"overhead only) {free:.2f}×. The MTP block costs {draft / c['main1']:.0%} of a "
          f"{cfg.num_hidden_layers}-layer main forward, and at this size each forward is dominated by "
          f"per-module Python/dispatch overhead, so 2 positions cost almost what 1 does.")


if __name__ == "__main__":
    main()
