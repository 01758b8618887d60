"""Data for the course: the embedded standard-library corpus, byte tokens, reproducible batches."""

from .batches import TokenStream
from .corpus import Corpus, CorpusError, default_root, load_corpus
from .tokenizer import ByteTokenizer, bits_per_byte

__all__ = ["ByteTokenizer", "Corpus", "CorpusError", "TokenStream", "bits_per_byte", "default_root", "load_corpus"]
