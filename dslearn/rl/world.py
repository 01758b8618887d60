"""Chapter 09's world: graded additions where a longer, checked chain of thought pays off, in two languages.

API::

    Problem(a, b, language)        .question .answer .difficulty (digits) .split ("train"/"held_out") .prompt_ids
    problems(n, digits, language, split, seed) -> list[Problem]      distinct problems, at least one carry each
    annotate(problem, language=None, slips=(), checks=(), switch_at=None) -> str   the worked solution (think text)
    consistency(think, language) -> float   share of the lettered words written in ``language`` (R1 §2.3.2)
    self_checks(think) -> int               number of self-check lines
    reward_parts(problem, response_tokens) -> Rewards(accuracy, format, consistency, checks, length)
    base_corpus(n_docs, ...) -> bytes       pretraining text: imperfect solutions + plain text
    plain_text(n_bytes, seed) / plain_pairs(n, seed)   non-reasoning text from the embedded corpus

**Tasks.** "what is 4821+3967?": two ``digits``-digit numbers (difficulty = digits, 2..5), every
problem needing at least one carry. Answers are checked exactly. A problem's split is decided by the
hash of its arithmetic ``"a+b"`` (``tasks.is_held_out``), not of its prompt, so no held-out sum is ever
seen in training in either language.

**The annotator** — the documented program standing in for R1's human annotators — writes a readable
worked solution, column by column from the ones, then a one-line summary (R1's cold-start format:
reasoning, then summary)::

    5+7=12 carry                   a column: its digits, the incoming carry (+1), the sum; "carry" if ≥ 10
    8+4+1=13 carry                 (the column writes the sum's last digit)
    check 8+4+1=13 ok              a self-check of a column that took a carry: recompute it with the +1
    3+0+1=4
    so 432                         the summary

**Slips and self-checks.** The typical slip is the one chapter 08 plants: a column forgets its
incoming carry (``8+4=12``). A **self-check** is a line ``check x+y+1=s ok`` after a column that
took a carry; when that column slipped, the check catches it and corrects it in place::

    8+4=12 carry
    check 8+4+1=13 fix             (the column's sum is now 13: it writes 3)

so a solution that checks its carry columns is right even when it slips — checking (and the length
it costs) pays off, which is what reinforcement can discover.

**Two languages** with disjoint alphabets, so mixing is measurable: ``en`` writes its words in lower-case
ASCII (carry, check, ok, fix, so), ``da`` — a toy Danish — in capitals (MENTE, TJEK, JA, RET, SVAR).
The prompt's language is the target language. Digits and symbols belong to neither.
``consistency`` is R1's language-consistency reward: the proportion of the think block's words
(maximal runs of letters) written in the target language (0 when there is none).

**The base corpus** (pretraining) mixes, like the web text a base model saw, *imperfect* solutions —
each carry column slips at a rate that depends on the language the line is written in (``en`` lines
slip less: the model "reasons better in English", as R1's did), some columns self-checked (a check
catches its slip), a share of solutions switching language midway (mixed) — with plain text from the
embedded corpus. So the base model knows the format and sometimes solves problems (pass@1 low, pass@k
high), and a ``da`` prompt is answered more accurately by drifting into ``en``: the trade-off R1
reports between language consistency and accuracy is present in this world by construction.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from ..data.corpus import load_corpus
from .tasks import is_held_out
from .template import EOS, encode_prompt, encode_response, parse

LANGUAGES = ("en", "da")
WORDS = {
    "en": {"carry": "carry", "check": "check", "ok": "ok", "fix": "fix", "so": "so",
           "question": "what is {a}+{b}?"},
    "da": {"carry": "MENTE", "check": "TJEK", "ok": "JA", "fix": "RET", "so": "SVAR",
           "question": "HVAD ER {a}+{b}?"},
}
DIGITS = (2, 5)  # the difficulty range: operands of 2..5 digits
_WORD = re.compile(r"[A-Za-z]+")
_CHECK = re.compile(r"^(?:check|TJEK) ", re.MULTILINE)


def _check_language(language: str, field: str = "language") -> None:
    if language not in LANGUAGES:
        raise ValueError(f"{field} must be one of {LANGUAGES}, got {language!r}")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    language: str = "en"
    family = "addition"

    def __post_init__(self) -> None:
        _check_language(self.language)
        if self.a < 0 or self.b < 0:
            raise ValueError(f"Problem operands must be >= 0, got a={self.a}, b={self.b}")

    @property
    def question(self) -> str:
        return WORDS[self.language]["question"].format(a=self.a, b=self.b)

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def difficulty(self) -> int:
        """Digits of the longer operand."""
        return max(len(str(self.a)), len(str(self.b)))

    @property
    def split(self) -> str:
        return "held_out" if is_held_out(f"{self.a}+{self.b}") else "train"

    @property
    def prompt_ids(self) -> list[int]:
        return encode_prompt(self.question)


def carries(a: int, b: int) -> int:
    """Number of columns of a + b that produce a carry."""
    n, c = 0, 0
    while a or b:
        c = (a % 10 + b % 10 + c) >= 10
        n += c
        a, b = a // 10, b // 10
    return n


def problems(n: int, digits: int = 3, language: str = "en", split: str | None = "train",
             seed: int = 0) -> list[Problem]:
    """n distinct problems of ``digits``-digit operands, each with at least one carry, from ``split``
    ("train", "held_out" or None for both)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not DIGITS[0] <= digits <= DIGITS[1]:
        raise ValueError(f"digits must be in {DIGITS[0]}..{DIGITS[1]}, got {digits}")
    _check_language(language)
    if split not in ("train", "held_out", None):
        raise ValueError(f"split must be 'train', 'held_out' or None, got {split!r}")
    rng = random.Random(f"r1-world-{seed}-{digits}-{language}-{split}")
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    out, seen = [], set()
    for _ in range(200 * n):
        p = Problem(rng.randint(lo, hi), rng.randint(lo, hi), language)
        if (p.a, p.b) in seen or carries(p.a, p.b) == 0 or (split is not None and p.split != split):
            continue
        seen.add((p.a, p.b))
        out.append(p)
        if len(out) == n:
            return out
    raise ValueError(f"could not draw {n} distinct {split or ''} problems of {digits} digits; ask for fewer")


def mixed_problems(n_per_level: int, levels=(2, 3, 4), languages=LANGUAGES, split: str = "train",
                   seed: int = 0) -> list[Problem]:
    """n_per_level problems for every (digits, language), interleaved in a seeded order."""
    out = [p for d in levels for lang in languages for p in problems(n_per_level, d, lang, split, seed)]
    random.Random(seed).shuffle(out)
    return out


# --- the annotator -------------------------------------------------------------------------------
def annotate(problem: Problem, language: str | None = None, slips=(), checks=(), switch_at: int | None = None) -> str:
    """The worked solution (the think text) of ``problem``, column by column (column 0 = ones), then a summary.

    language: the language of the words (default: the problem's). slips: columns that forget their
    incoming carry (only columns that have one can slip). checks: columns followed by a self-check
    (only columns with an incoming carry are checked); a check catches its column's slip and fixes it.
    switch_at: from this column on (the summary included) write in the other language — a mixed solution.
    The summary states the number the columns wrote: with an uncaught slip it is wrong."""
    language = language or problem.language
    _check_language(language)
    other = LANGUAGES[1 - LANGUAGES.index(language)]
    da, db = str(problem.a)[::-1], str(problem.b)[::-1]
    n = max(len(da), len(db))
    lines, written, carry = [], [], 0
    for col in range(n):
        w = WORDS[other if switch_at is not None and col >= switch_at else language]
        x, y = int(da[col]) if col < len(da) else 0, int(db[col]) if col < len(db) else 0
        slip = carry == 1 and col in slips
        s = x + y + (0 if slip else carry)
        plus = "+1" if carry and not slip else ""
        lines.append(f"{x}+{y}{plus}={s}" + (f" {w['carry']}" if s >= 10 else ""))
        if carry and col in checks:
            lines.append(f"{w['check']} {x}+{y}+1={x + y + 1} {w['fix'] if slip else w['ok']}")
            s = x + y + 1
        written.append(s % 10)
        carry = int(s >= 10)
    w = WORDS[other if switch_at is not None and n >= switch_at else language]
    if carry:
        written.append(1)
    total = int("".join(map(str, reversed(written))))
    lines.append(f"{w['so']} {total}")
    return "\n".join(lines)


def summary_answer(think: str) -> str | None:
    """The number on the think text's last line (the summary), or None."""
    m = re.search(r"(-?\d+)\s*\Z", think)
    return m.group(1) if m else None


def response(problem: Problem, think: str) -> list[int]:
    """The response tokens for a worked solution: the answer is the summary's number."""
    return encode_response(think, summary_answer(think) or "?")


# --- measuring a response ------------------------------------------------------------------------
def consistency(think: str, language: str) -> float:
    """R1's language consistency: the share of the words (runs of letters) written in ``language``'s
    alphabet (en: all lower-case, da: all capitals); 0.0 when the text has no word."""
    _check_language(language)
    words = _WORD.findall(think)
    if not words:
        return 0.0
    own = str.islower if language == "en" else str.isupper
    return sum(own(w) for w in words) / len(words)


def self_checks(think: str) -> int:
    """Number of self-check lines (``check …`` / ``TJEK …``)."""
    return len(_CHECK.findall(think))


@dataclass(frozen=True)
class Rewards:
    accuracy: float  # 1.0: well-formed and the answer is the exact sum
    format: float  # 1.0: template.parse accepts the response
    consistency: float  # share of target-language words in the think block (0 if malformed)
    checks: int  # self-check lines in the think block (0 if malformed)
    length: int  # response tokens


def reward_parts(problem: Problem, tokens) -> Rewards:
    """Every rule-based measurement of one response (the tokens after the prompt)."""
    parsed = parse(tokens)
    if parsed is None:
        return Rewards(0.0, 0.0, 0.0, 0, len(tokens))
    right = re.fullmatch(r"-?\d+", parsed.answer) is not None and int(parsed.answer) == problem.a + problem.b
    return Rewards(float(right), 1.0, consistency(parsed.think, problem.language), self_checks(parsed.think),
                   len(tokens))


# --- corpora ---------------------------------------------------------------------------------------
def plain_text(n_bytes: int, seed: int = 0, chunk: int = 256) -> list[str]:
    """Non-reasoning text: random chunks of about ``chunk`` bytes of the embedded standard-library corpus
    (training split), as valid UTF-8 strings without reserved bytes."""
    if n_bytes < 1:
        raise ValueError(f"n_bytes must be >= 1, got {n_bytes}")
    out, total = [], 0
    for s in _chunks(seed, chunk):
        if total >= n_bytes:
            return out
        out.append(s)
        total += len(s.encode())


def _chunks(seed: int, chunk: int):
    """Endless random chunks of the corpus's training text, decoded (partial characters at the ends dropped)."""
    text = load_corpus().train
    rng = random.Random(f"plain-{seed}")
    while True:
        i = rng.randrange(0, len(text) - chunk)
        yield text[i:i + chunk].decode("utf-8", errors="ignore")


def plain_pairs(n: int, seed: int = 0, head: int = 48, tail: int = 96) -> list[tuple[list[int], list[int]]]:
    """n non-reasoning SFT pairs: the prompt asks to continue a snippet of the corpus, the response is the
    continuation + EOS, without a think block (R1 gives simple non-reasoning queries no chain of thought)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pairs = []
    for s in itertools.islice(_chunks(seed, head + tail), n):
        b = s.encode()
        h = b[:head].decode("utf-8", errors="ignore")
        t = b[len(h.encode()):].decode("utf-8", errors="ignore")
        pairs.append((encode_prompt("continue: " + h), [*t.encode(), EOS]))
    return pairs


def base_corpus(n_docs: int, levels=(2, 3, 4), slip_rate: dict | None = None, check_rate: float = 0.2,
                mix_rate: float = 0.2, da_share: float = 0.5, plain_share: float = 0.1, seed: int = 0) -> bytes:
    """Pretraining bytes: ``n_docs`` prompts from the training split, each followed by an imperfect worked
    solution, separated by blank lines, interleaved with plain text (about ``plain_share`` of the documents).

    slip_rate: per language, the chance that a carry column forgets its carry (default en 0.3, da 0.6);
    check_rate: the chance that a carry column is self-checked; mix_rate: the share of solutions that
    switch to the other language at a random column; da_share: the share of ``da`` prompts."""
    slip_rate = {"en": 0.3, "da": 0.6} if slip_rate is None else slip_rate
    if set(slip_rate) != set(LANGUAGES):
        raise ValueError(f"slip_rate must give a rate for each of {LANGUAGES}, got {sorted(slip_rate)}")
    for name, v in [*((f"slip_rate[{k!r}]", v) for k, v in slip_rate.items()), ("check_rate", check_rate),
                    ("mix_rate", mix_rate), ("da_share", da_share), ("plain_share", plain_share)]:
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if n_docs < 1:
        raise ValueError(f"n_docs must be >= 1, got {n_docs}")
    rng = random.Random(f"base-corpus-{seed}")
    pools = {(d, lang): problems(2000 if d > 2 else 1000, d, lang, "train", seed=seed + 17)
             for d in levels for lang in LANGUAGES}
    plain = _chunks(seed, 200)
    docs = []
    for _ in range(n_docs):
        if rng.random() < plain_share:
            docs.append(next(plain).strip().encode())
        lang = "da" if rng.random() < da_share else "en"
        p = rng.choice(pools[(rng.choice(levels), lang)])
        n_cols = p.difficulty
        switch = rng.randrange(1, n_cols + 1) if rng.random() < mix_rate else None
        other = LANGUAGES[1 - LANGUAGES.index(lang)]
        slips = {c for c in range(n_cols) if rng.random() < slip_rate[other if switch is not None and c >= switch
                                                                        else lang]}
        checks = {c for c in range(n_cols) if rng.random() < check_rate}
        think = annotate(p, lang, slips, checks, switch)
        docs.append(bytes(p.prompt_ids + response(p, think)))
    return b"\n\n".join(docs) + b"\n\n"


def cold_start_pairs(n: int, levels=(2, 3, 4), check_rate: float = 0.5, caught_slip_rate: float = 0.3,
                     seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """n (prompt, response) pairs of readable, correct solutions in the prompt's language (R1's cold start):
    languages and levels balanced; a carry column is self-checked at ``check_rate``, and a checked column
    slips (and is caught and fixed by its check) at ``caught_slip_rate`` — so the data shows reflection
    without ever showing a wrong answer."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for name, v in (("check_rate", check_rate), ("caught_slip_rate", caught_slip_rate)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    per = -(-n // (len(levels) * len(LANGUAGES)))
    pool = mixed_problems(per, levels, LANGUAGES, "train", seed=seed + 1)[:n]
    rng = random.Random(f"cold-start-{seed}")
    pairs = []
    for p in pool:
        checks = {c for c in range(p.difficulty) if rng.random() < check_rate}
        slips = {c for c in checks if rng.random() < caught_slip_rate}
        pairs.append((p.prompt_ids, response(p, annotate(p, p.language, slips, checks))))
    return pairs
