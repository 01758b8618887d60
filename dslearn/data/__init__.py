"""Data for the course: the embedded standard-library corpus, byte tokens, reproducible batches."""

from .batches import Batches, EvalBatches, TokenStream
from .corpus import Corpus, CorpusError, default_root, load_corpus
from .sft import SFTStream
from .tokenizer import ByteTokenizer, bits_per_byte

__all__ = ["Batches", "ByteTokenizer", "Corpus", "CorpusError", "EvalBatches", "SFTStream", "TokenStream",
           "bits_per_byte", "default_root", "load_corpus"]
