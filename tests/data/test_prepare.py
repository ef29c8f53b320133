"""``prepare``: on a corpus with planted exact duplicates, near-duplicates, junk and other
languages, each is removed for the right reason and counted; the dataset reads back with
``tfds.data_source`` and its packed rows give back exactly the kept documents; the fast
tokenizer path writes the same rows as the teaching one; the loader serves the rows (with
segment ids) and the training loop trains on them."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lineage_jax.config import ConfigError, DataConfig
from lineage_jax.data import loader, prepared
from lineage_jax.data.pipeline import prepare as prep
from lineage_jax.data.pipeline.packing import packed_targets
from lineage_jax.tokenize import ByteTokenizer
from lineage_jax.tokenize import load as load_tokenizer
from lineage_jax.tokenize.bpe_train import train_bpe

TEXT = Path(__file__).resolve().parents[2] / "scripts" / "langid_text"


def _sentences(lang):
    return [s for s in (TEXT / f"{lang}.txt").read_text(encoding="utf-8").splitlines() if s.strip()]


def make_corpus(root: Path) -> dict[str, str]:
    """{file name: what should happen to it}; writes text files and one JSONL file under root."""
    en, de, other = _sentences("en"), _sentences("de"), _sentences("other")
    clean = {f"en{k}.txt": " ".join(en[6 * k:6 * k + 6]) for k in range(8)}
    fate = {name: "kept" for name in clean}
    files = dict(clean)
    files["en0_copy.txt"] = "  " + clean["en0.txt"].upper().replace(" ", "\n\n ", 3) + "\n"
    fate["en0_copy.txt"] = "exact_dup"
    words = clean["en1.txt"].split()
    words[-3] = "sideways"                                     # one word changed near the end
    files["near_en1.txt"] = " ".join(words)
    fate["near_en1.txt"] = "near_dup"
    files["junk_symbols.txt"] = " ".join(["### $$$ %%% 123 456 ... ### !!!"] * 20)
    files["junk_lorem.txt"] = ("Lorem ipsum dolor sit amet, and the rest of that text is placeholder. " * 8).strip()
    files["junk_short.txt"] = "Buy now."
    files["junk_repeated.txt"] = "\n".join(["Click here to win a prize and the best deal of the year."] * 12)
    for k in ("junk_symbols.txt", "junk_lorem.txt", "junk_short.txt", "junk_repeated.txt"):
        fate[k] = "quality"
    files["german.txt"] = " ".join(de[:7])
    files["finnish.txt"] = " ".join(other[25:32])             # the Finnish sentences
    fate.update({"german.txt": "language", "finnish.txt": "language"})
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    fr = _sentences("fr")
    with open(root / "more.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": " ".join(en[48:50] + en[0:4]), "id": 1}) + "\n")   # shares en0's start only
        f.write("\n")
        f.write(json.dumps({"text": " ".join(fr[:7])}) + "\n")
    fate["more.jsonl:1"], fate["more.jsonl:3"] = "kept", "language"
    return fate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def prepared_byte(corpus, tmp_path_factory):
    root, fate = corpus
    out = tmp_path_factory.mktemp("prepared")
    report = prep.prepare([str(root)], str(out), prep.PrepareConfig(seq_len=64, eval_fraction=0.2))
    return out, report


def _name(source: str) -> str:
    path, sep, line = source.rpartition(":")
    return f"{Path(path).name}:{line}" if sep and path.endswith(".jsonl") else Path(source).name


def test_each_planted_document_is_removed_for_its_reason(corpus, prepared_byte):
    _, fate = corpus
    _, report = prepared_byte
    got = {_name(r["source"]): r["stage"] for r in report["removed_docs"]}
    want = {k: v for k, v in fate.items() if v != "kept"}
    assert got == want
    assert report["input_docs"] == len(fate)
    assert report["output_docs"] == sum(v == "kept" for v in fate.values())
    assert report["removed"] == {k: sum(v == k for v in fate.values())
                                 for k in ("exact_dup", "near_dup", "quality", "language", "content")}
    dup = {_name(r["source"]): r for r in report["removed_docs"]}
    assert _name(dup["en0_copy.txt"]["duplicate_of"]) == "en0.txt"
    assert _name(dup["near_en1.txt"]["duplicate_of"]) == "en1.txt" and dup["near_en1.txt"]["jaccard"] >= 0.8
    assert "lorem_ipsum" in dup["junk_lorem.txt"]["reasons"]
    assert dup["german.txt"]["language"] == "de" and dup["more.jsonl:3"]["language"] == "fr"
    rows = {r["stage"]: r for r in report["stages"]}
    assert rows["exact_dup"]["docs_in"] == len(fate) and rows["language"]["docs_out"] == report["output_docs"]


def test_dataset_reads_back_with_tfds_and_gives_back_the_kept_documents(corpus, prepared_byte):
    root, fate = corpus
    out, report = prepared_byte
    sources = {s["split"]: {} for s in map(json.loads, (out / "documents.jsonl").read_text().splitlines())}
    for s in map(json.loads, (out / "documents.jsonl").read_text().splitlines()):
        sources[s["split"]][s["document"]] = s["source"]
    assert set(sources) == {"train", "validation"}
    seen, total = [], 0
    tok = ByteTokenizer()
    for split in ("train", "validation"):
        src = tfds.data_source(prepared.NAME, split=split, data_dir=str(out))
        rows = {k: np.stack([src[i][k] for i in range(len(src))]) for k in prepared.FEATURES}
        assert rows["tokens"].shape[1] == 64
        seg = rows["segment_ids"]
        assert np.all(rows["tokens"][seg == 0] == tok.eos_id) and np.all(rows["document"][seg == 0] == -1)
        for r in range(seg.shape[0]):                             # positions restart per segment
            for s in np.unique(seg[r][seg[r] > 0]):
                np.testing.assert_array_equal(rows["positions"][r][seg[r] == s], np.arange((seg[r] == s).sum()))
        for d, ids in prepared.document_tokens(rows).items():
            assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
            source = sources[split][d]
            text = (Path(source).read_text(encoding="utf-8") if not source.endswith(":1")
                    else json.loads((root / "more.jsonl").read_text().splitlines()[0])["text"])
            assert tok.decode(ids[:-1].tolist()) == text
            seen.append(_name(source))
            total += ids.size
    assert sorted(seen) == sorted(k for k, v in fate.items() if v == "kept")
    assert report["tokens"] == total
    # the same arrays through read_prepared, metadata included
    splits, meta = prepared.read_prepared(out)
    assert meta["seq_len"] == 64 and meta["eos_id"] == tok.eos_id and meta["tokenizer"] == "byte"
    assert sum(int((s["segment_ids"] > 0).sum()) for s in splits.values()) == total


def test_fast_tokenizer_path_writes_the_same_rows_as_the_teaching_path(corpus, tmp_path):
    root, _ = corpus
    docs, _ = prep.read_documents([str(root)])
    bpe = train_bpe(docs, 400)
    bpe.save(str(tmp_path / "tok"))
    ids_fast, path_fast = prep.encode_documents(docs + ["lone \ud800 surrogate"], bpe, fast=True)
    ids_slow, path_slow = prep.encode_documents(docs + ["lone \ud800 surrogate"], bpe, fast=False)
    assert (path_fast, path_slow) == ("tokenizers", "teaching")
    assert all(np.array_equal(a, b) for a, b in zip(ids_fast, ids_slow))
    byte_fast, p = prep.encode_documents(docs, ByteTokenizer())
    assert p == "bytes" and all(a.tolist() == ByteTokenizer().encode(d) for a, d in zip(byte_fast, docs))
    reports = {}
    for fast in (True, False):
        cfg = prep.PrepareConfig(seq_len=32, tokenizer=str(tmp_path / "tok"), fast=fast)
        reports[fast] = prep.prepare([str(root)], str(tmp_path / f"out{fast}"), cfg)
    assert reports[True]["tokenizer"]["encode_path"] == "tokenizers"
    a, _ = prepared.read_prepared(tmp_path / "outTrue")
    b, meta = prepared.read_prepared(tmp_path / "outFalse")
    assert meta["vocab_size"] == 400 and meta["tokenizer_name"] == bpe.name
    for split in a:
        for k in prepared.FEATURES:
            np.testing.assert_array_equal(a[split][k], b[split][k])


def test_thresholds_are_config_and_bad_input_is_one_line(corpus, tmp_path):
    root, fate = corpus
    keep_de = prep.prepare([str(root)], str(tmp_path / "a"), prep.PrepareConfig(languages=("en", "de"),
                                                                                near_dup_threshold=0.95))
    assert keep_de["removed"]["language"] == 2 and keep_de["removed"]["near_dup"] == 0    # fi, fr go; de stays
    with pytest.raises(ConfigError, match="already holds a prepared dataset"):
        prep.prepare([str(root)], str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="near_dup_threshold=1.5"):
        prep.prepare([str(root)], str(tmp_path / "b"), prep.PrepareConfig(near_dup_threshold=1.5))
    with pytest.raises(ConfigError, match="allowed a comma-separated subset"):
        prep.prepare([str(root)], str(tmp_path / "b"), prep.PrepareConfig(languages=("klingon",)))
    with pytest.raises(FileNotFoundError, match="--inputs: .* does not exist"):
        prep.prepare([str(root / "nope")], str(tmp_path / "b"))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ConfigError, match="line 1 has no string field 'text'"):
        prep.prepare([str(tmp_path / "bad.jsonl")], str(tmp_path / "b"))


# ----------------------------------------------------------------------------- training reads it

def test_loader_serves_the_prepared_rows_with_segments(prepared_byte):
    out, _ = prepared_byte
    packed = loader.load_prepared(out)
    L = packed.meta["seq_len"]
    streams = loader.load_splits(DataConfig(prepared_dir=str(out)), ByteTokenizer())
    np.testing.assert_array_equal(streams.train, loader.prepared_token_splits(out).train)
    plain = loader.Sampler(streams.train, L, seed=3)
    packed_sampler = loader.PackedSampler(packed.train, seed=3, eos_id=packed.meta["eos_id"])
    n = packed.train["tokens"].shape[0]
    assert plain.num_windows == packed_sampler.num_windows == n
    got = packed_sampler.batch_with_segments(0, 2 * n)                    # two epochs
    np.testing.assert_array_equal(got["tokens"], plain.batch(0, 2 * n))   # the existing API, unchanged
    w = plain.window_ids(0, 2 * n)
    np.testing.assert_array_equal(got["tokens"][:, :-1], packed.train["tokens"][w])   # a window is a row
    _, weights = packed_targets({k: packed.train[k][w] for k in ("tokens", "segment_ids")})
    np.testing.assert_array_equal(got["weights"], weights)
    np.testing.assert_array_equal(got["segment_ids"], packed.train["segment_ids"][w])
    np.testing.assert_array_equal(got["positions"], packed.train["positions"][w])


def test_training_reads_a_prepared_dataset(corpus, tmp_path):
    """``lineage train data.prepared_dir=...`` trains on the packed rows with their segments: the
    first logged loss is the weighted loss of the initial model on the first packed batch
    (documents masked from each other), not the plain loss of the same tokens."""
    import jax
    from lineage_jax.config import load_config
    from lineage_jax.train.loop import train
    from lineage_jax.train.setup import build
    from lineage_jax.train.step import make_loss_fn
    root, _ = corpus
    prep.prepare([str(root)], str(tmp_path / "data"), prep.PrepareConfig(seq_len=32, eval_fraction=0.2))
    packed = loader.load_prepared(tmp_path / "data")
    eos = packed.meta["eos_id"]
    # most rows hold one piece of a long document: pick a seed whose first batch has a row of several
    seed = next(s for s in range(100)
                if (loader.PackedSampler(packed.train, s, eos).batch_with_segments(0, 8)["segment_ids"] > 1).any())
    cfg = load_config("tiny", [f"train.seed={seed}", "model.layers=1", "model.width=32", "model.heads=2", "model.context=32",
                               "model.attn_chunks=1", "train.batch_size=8", "train.steps=3", "train.eval_every=3",
                               "train.eval_batches=1", "train.log_every=1", "optim.warmup_steps=1",
                               f"data.prepared_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"])
    summary = train(cfg, progress=False)
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"]) and summary["eval_loss"] is not None
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1

    setup = build(cfg, compile_steps=False)
    params = setup.init_state(jax.random.key(cfg.train.seed)).params
    batch = loader.PackedSampler(packed.train, cfg.train.seed, eos).batch_with_segments(0, 8)
    loss_fn = make_loss_fn(setup.model, dropout=False)
    with setup.context():
        masked = float(loss_fn(params, batch, None)[1][0])
        plain = float(loss_fn(params, {"tokens": batch["tokens"]}, None)[1][0])
    assert first["loss"] == pytest.approx(masked, rel=1e-5)
    assert abs(masked - plain) > 1e-3

    bad = dataclasses.replace(cfg.data, tokenizer=str(tmp_path / "tok"))
    train_bpe(["some text to learn from"] * 3, 300).save(str(tmp_path / "tok"))
    with pytest.raises(ConfigError, match="data.prepared_dir: tokenized with byte .* set data.tokenizer=byte"):
        loader.load_splits(bad, load_tokenizer(str(tmp_path / "tok")))
