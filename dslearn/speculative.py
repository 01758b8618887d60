"""Self-speculative decoding: the model's own multi-token-prediction modules draft, the model verifies.

DeepSeek-V3 §2.2 trains D MTP modules to densify the training signal and notes that at inference they "can
also be repurposed for speculative decoding to further improve the generation latency"; §5.4.3 reports that
the second token predicted by MTP is accepted 85–90% of the time, for about 1.8× the tokens per second.

Plain cached decoding pays one forward pass of the main model per token. Here, with x_{0..n} known (the main
model has processed x_0..x_{n−1}, and x_n is the token it just chose):

    1. draft    depth 1 reads (h_{n−1}^0, Emb(x_n)) and proposes d_1 for x_{n+1}; depth k reads
                (h_{n−1}^{k−1}, Emb(d_{k−1})) and proposes d_k for x_{n+k} — a cheap pass: one block per depth
    2. verify   ONE forward of the main model over [x_n, d_1, …, d_D] (D+1 positions, cache appended) gives
                the main model's own distribution p_j for x_{n+1+j}, j = 0..D, at once
    3. accept   d_1, d_2, … while they pass the test below; at the first rejection take the main model's own
                token instead; if all D pass, p_D gives one more token for free
    4. roll back the caches: the main cache drops the positions of rejected drafts (``DecodeState.truncate``);
                each MTP depth keeps only the positions whose inputs are verified tokens, and next step
                re-runs the rest with the new hidden states h^0 the verify pass returned

Every step costs one main forward of D+1 positions (plus the drafting) and yields 1 to D+1 tokens. With the
drafted tokens accepted independently with probability α each (a model: deeper drafts are in truth accepted
less often), the expected tokens per verify step are ``expected_tokens_per_step(α, D)`` = 1 + α + … + α^D;
on CPU at batch 1 a forward of 2 positions costs little more than one of 1 (per-step overhead dominates), so
tokens/s grow by about that factor, less the drafting cost (``bench/mtp_decode.py`` measures both).

Why greedy output is identical to plain greedy decoding. The verify pass computes, at each position, the
main model's logits given exactly the prefix plain decoding would have had at that point (the drafts it
conditions on are only kept if they equal the main model's own argmax). So the accepted tokens and the
correction token are the main model's argmaxes, step for step. The drafts decide only how many tokens one
forward yields, never which. In exact arithmetic this is an identity; in floating point, a forward over 2
positions sums in another order than one over 1 position (differences ~1e-7 relative in float32), so a
near-tie between the two top logits could flip. The tests run in float64 with non-trivial weights, where
that does not happen on any of the prompts; in float32 the output matches except at such ties.

Sampling (temperature > 0, optional top-k): speculative sampling (Leviathan et al. 2023; Chen et al. 2023).
Let q_j be the distribution the draft d_{j+1} was sampled from (the MTP depth's logits under the same
temperature and top-k) and p_j the main model's at that position. Accept d with probability
min(1, p_j(d)/q_j(d)); on rejection sample from norm(max(0, p_j − q_j)) and stop. Then each emitted token
is distributed exactly as p_j: P(x) = q(x)·min(1, p(x)/q(x)) + (1 − Σ_y min(q(y), p(y)))·norm(max(0, p−q))(x)
= min(q(x), p(x)) + max(0, p(x) − q(x)) = p(x). The output distribution is the main model's (tested
against the exact distribution on a vocabulary of 8).

    paper / algorithm                  code
    -----------------                  ----
    h_i^0 (main, before final norm)    CausalLM.forward(..., return_hidden=True).hidden; buffer hs[0]
    depth k's incremental pass         model.mtp.draft(k, h^{k−1}, Emb(t), states[k−1], model.prepare)
    P^k (draft distribution q)         model.mtp.logits(k, h^k, model.lm_head)
    roll back                          DecodeState.truncate(length) → KVCache / LatentKVCache.truncate
    α, E[tokens per verify step]       SpeculativeResult.acceptance_rate, expected_tokens_per_step(α, D)

The fast path (``decode=``, as in ``generate``). "eager", the default, is the reference above: growing
``DecodeState``s, the model's forward called directly. "static" runs the same passes on ``StaticDecodeState``s
(fixed shapes, ``dslearn.model.static_decode``): the verify pass as ``decode_step(model, kind="verify")``, each
depth's drafting as ``decode_step(model, kind="draft")``, roll-back by the same ``truncate``; "compiled" compiles
those steps with torch.compile — at most D+1 verify graphs (m+1 positions) and a few draft graphs per depth (its
chunk is 1 + the drafts just accepted + k − 1 positions); the prefills stay eager, their shapes follow the
prompt. Same tokens as "eager" (tested in float64: greedy, seeded sampling, MLA naive and absorbed, MoE); in
float32 the summation order differs, as in ``generate``'s static path, so ties at ~1e-7 may flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generate import CACHE_BUCKET, check_generation_args, filter_logits
from .model.static_decode import decode_step


@dataclass
class SpeculativeResult:
    tokens: list[int]  # the new tokens (max_new_tokens of them)
    drafted: int = 0  # draft tokens proposed by the MTP depths
    accepted: int = 0  # of those, accepted by the main model
    verify_steps: int = 0  # main-model forwards after the prefill (each yields 1 + its accepted drafts)

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (NaN when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_step(self) -> float:
        """New tokens per verify step, the first token (from the prefill) left out."""
        return (len(self.tokens) - 1) / self.verify_steps if self.verify_steps else float("nan")


def expected_tokens_per_step(acceptance: float, depth: int = 1) -> float:
    """Expected tokens one verify step yields when each of ``depth`` drafts is accepted with probability
    ``acceptance`` independently, and drafting stops at the first rejection:

        E = Σ_{j=0}^{D} α^j = (1 − α^{D+1}) / (1 − α)         (D = 1: 1 + α)

    The speed-up over plain decoding is E × (time of a plain step) / (time of a speculative step)."""
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
    return float(sum(acceptance ** j for j in range(depth + 1)))


def _probs(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The sampling distribution of ``generate``: logits/T, top-k filtered, softmax. (V,) → (V,) float32."""
    return filter_logits(logits.float()[None] / temperature, top_k)[0].softmax(-1)


@torch.no_grad()
def speculative_generate(model, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
                         top_k: int | None = None, generator: torch.Generator | None = None,
                         decode: str = "eager") -> SpeculativeResult:
    """Generate ``max_new_tokens`` tokens after ``prompt`` (one sequence, a list of token ids), drafting with
    ``model.mtp`` (every depth of it) and verifying with the main model. ``temperature=0`` is greedy and gives
    the tokens of ``generate(model, [prompt], max_new_tokens, temperature=0)``; otherwise the tokens are
    distributed as that call's with the same ``temperature`` and ``top_k`` (the random draws differ).
    ``decode``: "eager" (the reference), "static" or "compiled" (module docstring); the same tokens either way."""
    if getattr(model, "mtp", None) is None:
        raise ValueError("speculative_generate needs a model with multi-token prediction modules "
                         "(config.num_nextn_predict_layers >= 1); this model has none")
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()
    if len(prompt) > 0 and isinstance(prompt[0], (list, tuple)):
        if len(prompt) != 1:
            raise ValueError(f"speculative_generate decodes one sequence (batch 1); got {len(prompt)} prompts")
        prompt = prompt[0]
    check_generation_args([prompt], max_new_tokens, temperature, top_k, None, model.config.max_position_embeddings,
                          decode=decode)
    greedy = temperature == 0
    D, mtp, embed = len(model.mtp), model.mtp, model.model.embed_tokens
    p = model.lm_head.weight
    device, dtype = p.device, p.dtype
    P, max_len = len(prompt), len(prompt) + max_new_tokens
    static = decode != "eager"
    if static:  # the cache length in buckets, so that calls with other lengths reuse the compiled graphs
        max_len = -(-max_len // CACHE_BUCKET) * CACHE_BUCKET
        verify_step = decode_step(model, decode == "compiled", kind="verify")
        draft_step = decode_step(model, decode == "compiled", kind="draft")

    def ids(tokens: list[int]) -> torch.Tensor:
        return torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)

    def sample(probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=generator))

    def verify(tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The main model over ``tokens`` continuing its cache: logits (1, T, V), hidden states h^0 (1, T, d)."""
        if static:
            return verify_step(ids(tokens), state)
        out = model(ids(tokens), state=state, return_hidden=True)
        return out.logits, out.hidden

    def draft(k: int, h_prev: torch.Tensor, tokens: list[int], st) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth k over a chunk continuing its cache ``st``: h^k (1, T', d), its logits at the last position (V,).
        A depth's first chunk (its prefill, as long as the prompt) runs eagerly on the static path too."""
        if static and st.length > 0:
            h, logits = draft_step(ids(tokens), st, k, h_prev)
            return h, logits[0]
        h = mtp.draft(k, h_prev, embed(ids(tokens)), st, model.prepare)  # (1, T', d)
        return h, mtp.logits(k, h[0, -1], model.lm_head)

    was_training = model.training
    model.eval()
    try:
        state = model.new_decode_state(1, max_len, static=static)
        states = mtp.new_decode_state(1, max_len, static=static)
        # hs[k][:, i] = h_i^k, the input depth k+1 reads at position i (k = 0: the main model's states)
        hs = [torch.zeros(1, max_len, model.config.hidden_size, dtype=dtype, device=device) for _ in range(D)]
        result = SpeculativeResult(tokens=[])
        # 1. prefill: the main model over the prompt; its last logits give the first token, plainly
        out = model(ids(prompt), state=state, last_only=True, return_hidden=True)
        hs[0][:, :P] = out.hidden
        last = out.logits[0, -1]
        seq = list(prompt) + [int(last.argmax()) if greedy else sample(_probs(last, temperature, top_k))]
        while len(seq) - P < max_new_tokens:
            n = len(seq) - 1  # the main model has processed x_0..x_{n−1}; x_n is chosen, not yet fed
            m = min(D, max_new_tokens - (len(seq) - P) - 1)  # drafts worth making (never past max_new_tokens)
            # 2. draft: depth k runs its positions not yet verified-and-cached, [states[k−1].length, n)
            drafts, qs = [], []
            for k in range(1, m + 1):
                st, lo = states[k - 1], states[k - 1].length
                known = seq + drafts  # x_{i+k} for the positions below (drafts past x_n)
                h, logits = draft(k, hs[k - 1][:, lo:n], known[lo + k:n + k], st)  # (1, n−lo, d); (V,): x_{n+k}
                if k < D:
                    hs[k][:, lo:n] = h
                st.truncate(max(0, n + 1 - k))  # keep the positions whose token x_{i+k} is verified
                if greedy:
                    drafts.append(int(logits.argmax()))
                else:
                    qs.append(_probs(logits, temperature, top_k))
                    drafts.append(sample(qs[-1]))
            # 3. verify: one main forward over [x_n, d_1..d_m] → its distribution for x_{n+1}..x_{n+m+1}
            logits, hidden = verify([seq[n]] + drafts)
            hs[0][:, n:n + m + 1] = hidden
            logits = logits[0]  # (m+1, V)
            result.verify_steps += 1
            result.drafted += m
            accepted, extra = 0, None
            for j, d in enumerate(drafts):
                if greedy:
                    main = int(logits[j].argmax())
                    if main != d:
                        extra = main
                        break
                else:
                    pj, qj = _probs(logits[j], temperature, top_k), qs[j]
                    u = float(torch.rand((), generator=generator, device=device))
                    if u >= float(pj[d] / qj[d]):  # reject with probability 1 − min(1, p/q)
                        residual = (pj - qj).clamp(min=0)
                        extra = sample(residual / residual.sum() if residual.sum() > 0 else pj)
                        break
                accepted += 1
            if extra is None:  # every draft passed: the last position's distribution gives one more token
                extra = int(logits[m].argmax()) if greedy else sample(_probs(logits[m], temperature, top_k))
            result.accepted += accepted
            # 4. roll back: keep x_n and the accepted drafts in the main cache; the rest was never said
            state.truncate(n + 1 + accepted)
            seq += drafts[:accepted] + [extra]
        result.tokens = seq[P:P + max_new_tokens]
        return result
    finally:
        model.train(was_training)
