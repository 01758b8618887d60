"""Data for the course: the embedded standard-library corpus, byte tokens, reproducible batches."""

from .batches import Batches, EvalBatches, TokenStream
from .corpus import Corpus, CorpusError, default_root, load_corpus
from .fim import FIM_TOKENS, FIMStream, fim_prompt, psm
from .sft import SFTStream
from .tokenizer import ByteTokenizer, bits_per_byte

__all__ = ["FIM_TOKENS", "Batches", "ByteTokenizer", "Corpus", "CorpusError", "EvalBatches", "FIMStream", "SFTStream",
           "TokenStream", "fim_prompt", "psm",
           "bits_per_byte", "default_root", "load_corpus"]
