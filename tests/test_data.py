import math

import pytest
import torch

from dslearn.data import ByteTokenizer, CorpusError, TokenStream, bits_per_byte, load_corpus
from dslearn.data.corpus import select_files


def test_stdlib_corpus_is_found_and_split_by_file():
    c = load_corpus()
    assert len(c.train) > 2_000_000 and len(c.val) > 100_000
    assert not set(c.train_files) & set(c.val_files)
    assert list(c.train_files) == sorted(c.train_files)
    assert not any(part in ("test", "tests", "site-packages") for f in c.train_files for part in f.split("/"))
    assert 0.01 < len(c.val) / (len(c.train) + len(c.val)) < 0.15
    assert len(c.sha256) == 64 and c.python_version.count(".") == 2
    assert "validation files" in c.describe()


def test_selection_and_hash_are_deterministic(corpus_dir):
    files = select_files(corpus_dir)
    assert files == sorted(files) and len(files) == 40 - 6  # mod_00, 07, 14, 21, 28, 35 sit in test/ dirs
    assert "site-packages/foreign.py" not in files
    a = load_corpus.__wrapped__(corpus_dir)
    b = load_corpus.__wrapped__(str(corpus_dir))
    assert a.sha256 == b.sha256 and a.train == b.train
    (corpus_dir / "pkg" / "mod_01.py").write_text("changed = True\n")
    assert load_corpus.__wrapped__(corpus_dir).sha256 != a.sha256
    assert a.train.startswith(b"# ==> ")


def test_environment_override(corpus_dir, monkeypatch):
    monkeypatch.setenv("DSLEARN_CORPUS_DIR", str(corpus_dir))
    assert load_corpus.__wrapped__().root == str(corpus_dir)


def test_missing_or_empty_corpus_gives_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist.*DSLEARN_CORPUS_DIR"):
        load_corpus.__wrapped__(tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="no .py files"):
        load_corpus.__wrapped__(tmp_path)
    (tmp_path / "one.py").write_text("x = 1\n")
    with pytest.raises(CorpusError, match="too few to split"):
        load_corpus.__wrapped__(tmp_path)
    with pytest.raises(ValueError, match="val_percent"):
        load_corpus.__wrapped__(tmp_path, val_percent=0)


def test_batches_are_a_function_of_seed_and_step():
    s = TokenStream(bytes(range(256)) * 40)
    x1, y1 = s.batch(step=3, batch_size=4, seq_len=16, seed=1)
    x2, y2 = s.batch(step=3, batch_size=4, seq_len=16, seed=1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, s.batch(step=4, batch_size=4, seq_len=16, seed=1)[0])
    assert not torch.equal(x1, s.batch(step=3, batch_size=4, seq_len=16, seed=2)[0])
    assert x1.dtype == torch.long and x1.shape == (4, 16)
    assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are the inputs shifted by one
    assert torch.equal(y1, (x1 + 1) % 256)  # ...and really the next byte of this stream


def test_eval_batches_are_fixed_and_cover_the_stream():
    s = TokenStream(bytes(1000))
    a = [x for x, _ in s.eval_batches(10, 32, 4)]
    b = [x for x, _ in s.eval_batches(10, 32, 4)]
    assert [t.shape[0] for t in a] == [4, 4, 2] and all(torch.equal(p, q) for p, q in zip(a, b))


def test_too_small_streams_say_how_much_is_needed():
    s = TokenStream(b"abc", "validation split")
    with pytest.raises(CorpusError, match="validation split holds 3 tokens.*seq_len=16 need at least 17"):
        s.batch(0, 2, 16)
    with pytest.raises(ValueError, match="seq_len"):
        s.batch(0, 2, 0)


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    text = "def f(x):  # naïve → ok ✓\n"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="0..255"):
        tok.decode([65, 300])


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)
    assert bits_per_byte(4 * math.log(2), bytes_per_token=4.0) == pytest.approx(1.0)
