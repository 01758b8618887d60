"""Shared fixtures: tiny configs, a small synthetic corpus, byte streams, thread/RNG isolation, and the
check that multi-process tests leave no worker behind. Plain builders and constants are in helpers.py."""

import multiprocessing as mp

import pytest
import torch
from helpers import tiny_dense_config

from dslearn.config import ModelConfig
from dslearn.data import TokenStream


@pytest.fixture
def one_thread_own_rng():
    """One intra-op thread (tiny tensors: as fast as two, and immune to spin-waits on busy shared cores),
    with torch's thread count and global RNG restored afterwards, so a test never changes what later tests
    see. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread_own_rng")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(n)


@pytest.fixture
def no_orphans():
    """Fails the test if a worker process it started is still alive when it ends. Multi-process modules opt
    in with ``pytestmark = pytest.mark.usefixtures("no_orphans")``."""
    yield
    assert mp.active_children() == [], "a worker process outlived the test"


@pytest.fixture
def tiny_config() -> ModelConfig:
    return tiny_dense_config()


@pytest.fixture
def gqa_config(tiny_config) -> ModelConfig:
    return tiny_config.replace(num_key_value_heads=2)


@pytest.fixture
def corpus_dir(tmp_path):
    """A directory of .py files laid out like a small standard library."""
    root = tmp_path / "stdlib"
    for i in range(40):
        sub = root / ("pkg" if i % 3 else "") / ("test" if i % 7 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod_{i:02d}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i % 5}\n" * (5 + i))
    (root / "site-packages").mkdir()
    (root / "site-packages" / "foreign.py").write_text("never = 'read'\n")
    return root


@pytest.fixture
def text_streams():
    """Highly regular text: a model learns it within a few dozen steps."""
    text = ("def add(a, b):\n    return a + b\n\n" * 400).encode()
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    cut = int(0.9 * len(tokens))
    return TokenStream(tokens[:cut], "train"), TokenStream(tokens[cut:], "val")
