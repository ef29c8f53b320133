"""The data layer: stdlib_docs builder, the three sources, token caching, the resumable Sampler."""
import os
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lineage_jax.config import DataConfig
from lineage_jax.data import Sampler, StdlibDocs, TokenSplits, load_splits
from lineage_jax.data import loader, sources
from lineage_jax.data.stdlib_docs import PY_CONFIG, is_validation, module_document
from lineage_jax.tokenize import ByteTokenizer

TOK = ByteTokenizer()
EOS = TOK.eos_id


@pytest.fixture(scope="module")
def stdlib_builder():
    """The stdlib_docs corpus, prepared (first run only) under the tests' TFDS_DATA_DIR."""
    start = time.perf_counter()
    builder = sources.stdlib_builder(DataConfig())
    print(f"stdlib_docs ready in {time.perf_counter() - start:.2f}s at {builder.data_dir}")
    return builder


# ----------------------------------------------------------------------------- stdlib_docs

def test_stdlib_docs_prepares_and_reads_without_tensorflow(stdlib_builder):
    assert stdlib_builder.builder_config.name == PY_CONFIG
    assert "standard library" in stdlib_builder.info.description
    data_dir = str(sources.resolve_data_dir(DataConfig()))
    splits = tfds.data_source(f"stdlib_docs/{PY_CONFIG}", data_dir=data_dir)
    assert set(splits) == {"train", "validation"}
    train, val = splits["train"], splits["validation"]
    assert len(train) > 300 and 5 <= len(val) < len(train) / 5
    docs = {ex["module"].decode(): ex["text"].decode() for split in (train, val) for ex in split}
    assert "JSON (JavaScript Object Notation)" in docs["json"]
    assert "## def json.dumps(obj, *, skipkeys=False" in docs["json"]
    assert not any(part in ("test", "tests", "idle_test") for m in docs for part in m.split("."))
    assert all(is_validation(ex["module"].decode()) for ex in val)
    modules = [ex["module"].decode() for ex in train]
    assert modules[:2] == ["__future__", "__hello__"]  # sorted-path order, not shuffled
    assert "tensorflow" not in sys.modules


def test_module_document_parses_without_importing():
    src = b'"""Top doc."""\nimport does_not_exist\nclass A(B):\n    """A doc."""\n    def f(self, x=1):\n        """f doc."""\n'
    text = module_document("pkg.mod", src)
    assert text == ("# module pkg.mod\n\nTop doc.\n\n## class pkg.mod.A(B)\n\nA doc.\n\n"
                    "## def pkg.mod.A.f(self, x=1)\n\nf doc.\n")
    assert module_document("broken", b"def (:\n") == ""
    assert module_document("nodocs", b"x = 1\n") == ""


def test_stdlib_source_tokenizes_and_caches(stdlib_builder, monkeypatch):
    cfg = DataConfig(max_docs=12)
    splits = load_splits(cfg, TOK)
    assert isinstance(splits, TokenSplits)
    assert splits.train.dtype == np.int32 and splits.train.ndim == 1
    assert (splits.train == EOS).sum() == 12 and (splits.eval == EOS).sum() == 1
    assert splits.train[-1] == EOS
    assert TOK.decode(splits.train[:20].tolist()).startswith("# module __future__")
    monkeypatch.setattr(loader, "load_documents", lambda _: pytest.fail("cache miss: documents re-read"))
    again = load_splits(cfg, TOK)
    np.testing.assert_array_equal(again.train, splits.train)
    np.testing.assert_array_equal(again.eval, splits.eval)


def test_tfds_name_reads_a_prepared_registered_dataset(stdlib_builder):
    """The tfds_name path end to end, offline: stdlib_docs is itself a registered dataset."""
    data_dir = str(sources.resolve_data_dir(DataConfig()))
    cfg = DataConfig(tfds_name=f"stdlib_docs/{PY_CONFIG}", data_dir=data_dir, max_docs=5)
    docs = sources.load_documents(cfg)
    direct = sources.load_documents(DataConfig(max_docs=5))
    assert docs == direct and len(docs.train) == 5 and len(docs.eval) == 1


# ----------------------------------------------------------------------------- TFDS (mocked)

def _fake_source(records_by_split):
    """An ``as_data_source`` replacement serving fixed records (bytes, as real TFDS does)."""
    def as_data_source(self, split=None, **kwargs):
        del self, kwargs
        data = {s: [{"text": t.encode(), "label": 0} for t in texts] for s, texts in records_by_split.items()}
        return data if split is None else data[split]
    return as_data_source


def test_tfds_source_uses_train_and_test_splits(tmp_path):
    fake = _fake_source({"train": [f"review {i}" for i in range(6)], "test": ["held out a", "held out b"]})
    with tfds.testing.mock_data(as_data_source_fn=fake, policy=tfds.testing.MockPolicy.USE_CODE):
        cfg = DataConfig(tfds_name="imdb_reviews", data_dir=str(tmp_path))
        splits = load_splits(cfg, TOK)
        assert TOK.decode(splits.train.tolist()).split("<|endoftext|>")[:-1] == [f"review {i}" for i in range(6)]
        assert TOK.decode(splits.eval.tolist()) == "held out a<|endoftext|>held out b<|endoftext|>"
        limited = sources.load_documents(DataConfig(tfds_name="imdb_reviews", data_dir=str(tmp_path), max_docs=3))
        assert limited.train == ["review 0", "review 1", "review 2"] and limited.eval == ["held out a"]
        with pytest.raises(ValueError, match="no feature 'content'.*text, label"):
            sources.load_documents(DataConfig(tfds_name="imdb_reviews", tfds_text_key="content"))


def test_tfds_source_without_eval_split_hash_splits_train(tmp_path):
    texts = [f"document number {i}" for i in range(40)]
    with tfds.testing.mock_data(as_data_source_fn=_fake_source({"train": texts}),
                                policy=tfds.testing.MockPolicy.USE_CODE):
        docs = sources.load_documents(DataConfig(tfds_name="imdb_reviews", data_dir=str(tmp_path), eval_fraction=0.2))
    assert docs.eval and docs.train and sorted(docs.train + docs.eval) == sorted(texts)


# ----------------------------------------------------------------------------- text files

def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_text_files_missing_file_is_one_line(tmp_path):
    good = _write(tmp_path / "a.txt", "hello")
    cfg = DataConfig(text_files=(good, str(tmp_path / "nope.txt")), data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        load_splits(cfg, TOK)
    assert "nope.txt" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_splits(DataConfig(text_files=(str(tmp_path / "*.md"),), data_dir=str(tmp_path)), TOK)


def test_single_text_file_is_cut_at_a_character(tmp_path):
    text = "abcdefghij" * 10 + "é" * 20   # 120 characters, multi-byte at the end
    cfg = DataConfig(text_files=(_write(tmp_path / "one.txt", text),), data_dir=str(tmp_path), eval_fraction=0.1)
    docs = sources.load_documents(cfg)
    assert docs.train == [text[:108]] and docs.eval == [text[108:]]
    splits = load_splits(cfg, TOK)
    assert TOK.decode(splits.eval.tolist()) == "é" * 12 + "<|endoftext|>"


def test_text_files_split_by_file_with_at_least_one_eval(tmp_path):
    paths = [_write(tmp_path / "corpus" / f"f{i}.txt", f"file {i}") for i in range(3)]
    for given in (tuple(paths), (str(tmp_path / "corpus"),), (str(tmp_path / "corpus" / "*.txt"),)):
        docs = sources.load_documents(DataConfig(text_files=given, eval_fraction=0.01))
        assert len(docs.eval) == 1 and len(docs.train) == 2
        assert sorted(docs.train + docs.eval) == ["file 0", "file 1", "file 2"]
    many = [_write(tmp_path / "many" / f"g{i:02d}.txt", f"g{i}") for i in range(60)]
    docs = sources.load_documents(DataConfig(text_files=tuple(many), eval_fraction=0.25))
    assert 5 <= len(docs.eval) <= 30 and len(docs.train) + len(docs.eval) == 60
    again = sources.load_documents(DataConfig(text_files=tuple(reversed(many)), eval_fraction=0.25))
    assert sorted(again.eval) == sorted(docs.eval)             # the split depends on the file, not the order
    limited = sources.load_documents(DataConfig(text_files=tuple(many), max_docs=10))
    assert len(limited.train) + len(limited.eval) == 10 and limited.eval


def test_text_files_cache_is_invalidated_by_edits(tmp_path, monkeypatch):
    a = _write(tmp_path / "a.txt", "first version of a")
    b = _write(tmp_path / "b.txt", "bbbb")
    cfg = DataConfig(text_files=(a, b), data_dir=str(tmp_path / "cache"))
    first = load_splits(cfg, TOK)
    reads = []
    real = loader.load_documents
    monkeypatch.setattr(loader, "load_documents", lambda c: reads.append(c) or real(c))
    np.testing.assert_array_equal(load_splits(cfg, TOK).train, first.train)
    assert reads == []                                   # cache hit
    _write(tmp_path / "a.txt", "second version of a, longer")
    second = load_splits(cfg, TOK)
    assert len(reads) == 1 and "second version" in TOK.decode(np.concatenate(second).tolist())
    stat = os.stat(a)                                    # same size, new mtime
    _write(tmp_path / "a.txt", "SECOND version of a, longer")
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert "SECOND" in TOK.decode(np.concatenate(load_splits(cfg, TOK)).tolist()) and len(reads) == 2
    load_splits(DataConfig(text_files=(a, b), data_dir=str(tmp_path / "cache"), eval_fraction=0.3), TOK)
    assert len(reads) == 3                               # eval_fraction is part of the key


# ----------------------------------------------------------------------------- Sampler

def _stream(n=1000):
    return np.arange(n, dtype=np.int32)


def test_sampler_windows_and_shifted_targets():
    s = Sampler(_stream(), seq_len=16, seed=0)
    assert s.num_windows == 999 // 16
    batch = s.batch(0, 8)
    assert batch.shape == (8, 17) and batch.dtype == np.int32
    inputs, targets = batch[:, :-1], batch[:, 1:]
    np.testing.assert_array_equal(targets, inputs + 1)      # the stream is arange: shifted by one
    assert np.all(batch[:, 0] % 16 == 0)                     # windows start on multiples of seq_len


def test_sampler_is_deterministic_per_seed():
    tokens = np.random.default_rng(1).integers(0, 257, 5000).astype(np.int32)
    a, b, c = Sampler(tokens, 32, seed=3), Sampler(tokens, 32, seed=3), Sampler(tokens, 32, seed=4)
    np.testing.assert_array_equal(a.batch(17, 8), b.batch(17, 8))
    assert not np.array_equal(a.batch(0, 8), c.batch(0, 8))


def test_sampler_epoch_visits_every_window_once():
    s = Sampler(_stream(), seq_len=10, seed=7)
    n = s.num_windows
    for epoch in range(3):
        starts = s.batch(epoch * n, n)[:, 0]
        np.testing.assert_array_equal(np.sort(starts), np.arange(n) * 10)
    assert not np.array_equal(s.batch(0, n), s.batch(n, n))   # epochs are reshuffled


def test_sampler_resume_property_across_epochs():
    s = Sampler(_stream(), seq_len=10, seed=5)
    n = s.num_windows                                          # 99
    for position, bsz in [(0, 4), (13, 8), (n - 3, 4), (2 * n - 1, 2), (3 * n - 5, 70)]:
        whole = s.batch(position, 2 * bsz)
        halves = np.concatenate([s.batch(position, bsz), s.batch(position + bsz, bsz)])
        np.testing.assert_array_equal(whole, halves)
        fresh = Sampler(_stream(), seq_len=10, seed=5)            # a resumed run: new object, same answer
        np.testing.assert_array_equal(fresh.batch(position + bsz, bsz), whole[bsz:])
    numpy = Sampler(_stream(), seq_len=10, seed=5, order="numpy")   # its order, written out
    order = np.random.default_rng([5, 1]).permutation(n)
    np.testing.assert_array_equal(numpy.batch(n, 3)[:, 0], order[:3] * 10)


def test_sampler_too_little_data_says_how_much():
    with pytest.raises(ValueError, match="10 tokens.*needs at least 17") as e:
        Sampler(_stream(10), seq_len=16, seed=0)
    assert "\n" not in str(e.value)
    assert Sampler(_stream(17), seq_len=16, seed=0).num_windows == 1


def test_builder_class_is_registered():
    assert StdlibDocs.name == "stdlib_docs"
    assert tfds.builder_cls("stdlib_docs") is StdlibDocs
