"""The chat/reasoning template of chapter 09, with reserved tokens in the byte-level vocabulary.

API (what stages, the capstone and the notebook use)::

    USER, ASSISTANT, THINK, END_THINK, ANSWER, END_ANSWER, EOS    reserved token ids 0xF8 … 0xFE
    encode_prompt(question) -> list[int]        USER question ASSISTANT
    encode_response(think, answer) -> list[int] THINK think END_THINK ANSWER answer END_ANSWER EOS
    parse(response_tokens) -> Parsed | None      strict: one think block, then one answer block, then EOS
    display(tokens) -> str                       readable text, reserved tokens shown as <|user|>, <think>, …
    STOP = [EOS]                                 the stop sequence for sampling

DeepSeek-R1's template (Table 1) wraps the reasoning in ``<think>…</think>`` and the answer in
``<answer>…</answer>``; DeepSeek's tokenizers add special tokens (``<｜User｜>``, ``<｜Assistant｜>``,
``<｜end▁of▁sentence｜>``) that plain text can never produce. Chapter 08 spelled the tags out in bytes,
so a stray ``<think>`` in the text was indistinguishable from the real one. Here the tags are single
tokens that no text can contain, *without growing the 256-token byte vocabulary*: the bytes 0xF8–0xFF
never occur in valid UTF-8 (a leading byte 11111xxx would announce a 5- to 8-byte sequence, which
UTF-8 forbids), so they are free to reserve:

    byte   name          shown as
    0xF8   USER          <|user|>
    0xF9   ASSISTANT     <|assistant|>
    0xFA   THINK         <think>
    0xFB   END_THINK     </think>
    0xFC   ANSWER        <answer>
    0xFD   END_ANSWER    </answer>
    0xFE   EOS           <|eos|>
    0xFF   (unused)

A conversation is ``USER question ASSISTANT`` (the prompt, masked in SFT) followed by the response
``THINK reasoning END_THINK ANSWER answer END_ANSWER EOS``. ``parse`` is strict — the rule the format
reward is built on: exactly one think block, then one answer block, then EOS and nothing after it;
the think text and the answer must be valid UTF-8 without reserved bytes, the answer non-empty
(after stripping) and at most ``max_answer_chars`` characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

USER, ASSISTANT, THINK, END_THINK, ANSWER, END_ANSWER, EOS = range(0xF8, 0xFF)
RESERVED = {USER: "<|user|>", ASSISTANT: "<|assistant|>", THINK: "<think>", END_THINK: "</think>",
            ANSWER: "<answer>", END_ANSWER: "</answer>", EOS: "<|eos|>"}
STOP = [EOS]
MAX_ANSWER_CHARS = 64


@dataclass(frozen=True)
class Parsed:
    think: str  # the reasoning, as written (not stripped)
    answer: str  # the answer, stripped of surrounding whitespace


def _text_ids(text: str, field: str) -> list[int]:
    if not isinstance(text, str):
        raise TypeError(f"{field} must be a str, got {type(text).__name__}")
    return list(text.encode("utf-8"))  # UTF-8 never holds 0xF8–0xFF: no reserved token can appear


def encode_prompt(question: str) -> list[int]:
    """USER question ASSISTANT: what the model reads before it answers."""
    return [USER, *_text_ids(question, "question"), ASSISTANT]


def encode_response(think: str, answer: str) -> list[int]:
    """THINK think END_THINK ANSWER answer END_ANSWER EOS: a well-formed response."""
    return [THINK, *_text_ids(think, "think"), END_THINK, ANSWER, *_text_ids(answer, "answer"), END_ANSWER, EOS]


def _decode(ids: Sequence[int]) -> str | None:
    try:
        return bytes(ids).decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return None


def parse(tokens: Sequence[int], max_answer_chars: int = MAX_ANSWER_CHARS) -> Parsed | None:
    """The (think, answer) of a response (the tokens after the prompt) of exactly the required shape, else None."""
    tokens = list(tokens)
    special = [(i, t) for i, t in enumerate(tokens) if t in RESERVED or t == 0xFF]
    if [t for _, t in special] != [THINK, END_THINK, ANSWER, END_ANSWER, EOS]:
        return None
    (i_think, _), (i_end_think, _), (i_answer, _), (i_end_answer, _), (i_eos, _) = special
    # nothing before THINK, nothing between the blocks, nothing after EOS
    if i_think != 0 or i_answer != i_end_think + 1 or i_eos != i_end_answer + 1 or i_eos != len(tokens) - 1:
        return None
    think, answer = _decode(tokens[1:i_end_think]), _decode(tokens[i_answer + 1:i_end_answer])
    if think is None or answer is None:
        return None
    answer = answer.strip()
    if not answer or len(answer) > max_answer_chars:
        return None
    return Parsed(think, answer)


def display(tokens: Sequence[int]) -> str:
    """Readable text: reserved tokens by name, bytes that are not valid UTF-8 as U+FFFD."""
    out, run = [], []
    for t in tokens:
        if t in RESERVED:
            out.append(bytes(run).decode("utf-8", errors="replace"))
            out.append(RESERVED[t])
            run = []
        else:
            run.append(t)
    out.append(bytes(run).decode("utf-8", errors="replace"))
    return "".join(out)
