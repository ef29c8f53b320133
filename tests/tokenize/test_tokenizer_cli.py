"""``lineage tokenizer train`` writes a tokenizer that ``tokenizers``, ``lineage_jax.tokenize.load``
and ``data.tokenizer=DIR`` accept; ``lineage data prepare --json`` prepares a corpus with it and
prints the report; bad flags get one line and exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.data import prepared
from lineage_jax.tokenize import get_tokenizer, sennrich
from lineage_jax.tokenize.bpe_train import train_bpe

ROOT = Path(__file__).resolve().parents[2]
TEXT = ROOT / "scripts" / "langid_text"


def lineage(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "lineage_jax", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = (TEXT / "en.txt").read_text(encoding="utf-8").splitlines()
    for k in range(5):
        (root / f"doc{k}.txt").write_text(" ".join(lines[10 * k:10 * k + 10]), encoding="utf-8")
    (root / "doc0_again.txt").write_text((root / "doc0.txt").read_text(), encoding="utf-8")
    (root / "junk.txt").write_text("$$$ ### 123 " * 30)
    (root / "de.jsonl").write_text(json.dumps({"text": " ".join(
        (TEXT / "de.txt").read_text(encoding="utf-8").splitlines()[:8])}) + "\n", encoding="utf-8")
    return root


def test_train_then_prepare_through_the_cli(corpus, tmp_path):
    tok_dir = tmp_path / "tok"
    p = lineage("tokenizer", "train", "--text-files", str(corpus), "--vocab-size", "320", "--out", str(tok_dir),
                "--json")
    summary = json.loads(p.stdout)
    assert summary["vocab_size"] == 320 and summary["usable_as"] == f"data.tokenizer={tok_dir}"
    assert "counting words" in p.stderr                                   # the progress bar
    ours = get_tokenizer(str(tok_dir))                                    # what `lineage train data.tokenizer=DIR` does
    docs = [f.read_text(encoding="utf-8") for f in sorted(corpus.glob("*.txt"))]
    docs.append(json.loads((corpus / "de.jsonl").read_text())["text"])
    assert ours.merges == train_bpe(docs, 320).merges                    # the CLI trained on every document
    import tokenizers
    hf = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    for d in docs:
        assert hf.encode(d, add_special_tokens=False).ids == ours.encode(d)

    out = tmp_path / "data"
    p = lineage("data", "prepare", "--inputs", str(corpus), "--out", str(out), "--json", "--tokenizer", str(tok_dir),
                "--seq-len", "64", "--no-progress")
    report = json.loads(p.stdout)                                        # stdout is exactly one JSON object
    assert report["input_docs"] == 8 and report["output_docs"] == 5 and report["tokens"] > 0
    assert report["removed"] == {"exact_dup": 1, "near_dup": 0, "quality": 1, "language": 1, "content": 0}
    assert report["tokenizer"]["encode_path"] == "tokenizers" and report["seq_len"] == 64
    splits, meta = prepared.read_prepared(out)
    assert meta["tokenizer_name"] == ours.name and meta["vocab_size"] == 320
    texts = {ours.decode(ids[:-1].tolist()) for s in splits.values() for ids in prepared.document_tokens(s).values()}
    assert texts == {(corpus / f"doc{k}.txt").read_text(encoding="utf-8") for k in range(5)}

    p = lineage("data", "prepare", "--inputs", str(corpus), "--out", str(out), "--no-progress", check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--overwrite" in p.stderr


def test_fast_sentencepiece_and_sennrich_kinds(corpus, tmp_path):
    args = ["tokenizer", "train", "--text-files", str(corpus / "doc1.txt"), str(corpus / "doc2.txt"),
            "--vocab-size", "300", "--no-progress", "--json"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--fast"]) == 0
    slow, fast = get_tokenizer(str(tmp_path / "a")), get_tokenizer(str(tmp_path / "b"))
    assert slow.merges == fast.merges and slow.vocab == fast.vocab           # the fast path trains the same BPE

    assert cli.main(["tokenizer", "train", "--text-files", str(corpus / "doc1.txt"), "--vocab-size", "400",
                     "--kind", "sentencepiece", "--out", str(tmp_path / "spm"), "--no-progress"]) == 0
    spm = get_tokenizer(str(tmp_path / "spm"))
    text = (corpus / "doc3.txt").read_text(encoding="utf-8")
    assert spm.decode(spm.encode(text)) == text

    assert cli.main(["tokenizer", "train", "--text-files", str(corpus / "doc1.txt"), "--vocab-size", "60",
                     "--kind", "sennrich", "--out", str(tmp_path / "sen"), "--no-progress"]) == 0
    lines = (tmp_path / "sen" / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    words = (corpus / "doc1.txt").read_text(encoding="utf-8").split()
    freqs = {w: words.count(w) for w in dict.fromkeys(words)}
    alphabet = {c for w in freqs for c in w} | {sennrich.EOW}
    assert [tuple(x.split(" ")) for x in lines] == sennrich.learn_merges(freqs, 60 - len(alphabet))
    assert len(json.loads((tmp_path / "sen" / "vocab.json").read_text(encoding="utf-8"))) == 60


@pytest.mark.parametrize("argv, message", [
    (["tokenizer", "train", "--vocab-size", "100", "--out", "X"], "--vocab-size=100: a bytelevel vocabulary"),
    (["tokenizer", "train", "--vocab-size", "300", "--out", "X", "--kind", "sennrich", "--fast"],
     "--fast: only with --kind bytelevel"),
    (["tokenizer", "train", "--vocab-size", "100", "--out", "X", "--kind", "sentencepiece"],
     "--kind sentencepiece --vocab-size=100: Vocabulary size is smaller than required_chars"),
    (["data", "prepare", "--out", "X", "--quality", "min_wordz=3"], "--quality min_wordz: unknown threshold"),
    (["data", "prepare", "--out", "X", "--quality", "min_words=lots"], "--quality min_words=lots: expected an int"),
    (["data", "prepare", "--out", "X", "--languages", "en,xx"], "allowed a comma-separated subset"),
    (["data", "prepare", "--out", "X", "--near-dup-threshold", "0"], "near_dup_threshold=0.0: must lie in (0, 1)"),
    (["data", "prepare", "--out", "X", "--tokenizer", "nowhere"], "--tokenizer='nowhere': allowed 'byte'"),
])
def test_bad_flags_are_one_line(argv, message, corpus, tmp_path, capsys):
    flag = "--text-files" if argv[0] == "tokenizer" else "--inputs"
    argv = [a.replace("X", str(tmp_path / "o")) for a in argv] + [flag, str(corpus / "doc1.txt"), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_quality_thresholds_parse_by_type():
    from lineage_jax.commands.data import quality_config
    q = quality_config(["min_words=20", "max_symbol_to_word_ratio=0.3", "reject_lorem_ipsum=false",
                        "stop_words=der,die,das", "max_top_ngram_char_frac=2:0.5"])
    assert (q.min_words, q.max_symbol_to_word_ratio, q.reject_lorem_ipsum) == (20, 0.3, False)
    assert q.stop_words == ("der", "die", "das") and q.max_top_ngram_char_frac == {2: 0.5}
    assert np.isclose(quality_config([]).min_mean_word_length, 3.0)


def test_an_existing_tokenizer_is_replaced_only_with_overwrite(corpus, tmp_path, capsys):
    """Retraining into the same --out used to replace the tokenizer that runs trained with (issue 15, cause 4)."""
    out = tmp_path / "tok"
    train = ["tokenizer", "train", "--text-files", str(corpus / "doc1.txt"), "--out", str(out), "--no-progress"]
    assert cli.main([*train, "--vocab-size", "300"]) == 0
    first = (out / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert cli.main([*train, "--vocab-size", "280"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--out {out}: already holds a tokenizer (tokenizer.json)" in err, err
    assert "--overwrite" in err and (out / "tokenizer.json").read_bytes() == first
    assert cli.main([*train, "--vocab-size", "280", "--overwrite", "--kind", "sennrich"]) == 0
    assert not (out / "tokenizer.json").exists()            # a stale tokenizer.json would be loaded instead
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "vocab.json"]     # no temporary left


def test_missing_text_files_name_the_flag_that_was_given(tmp_path, capsys):
    assert cli.main(["tokenizer", "train", "--text-files", str(tmp_path / "nope.txt"), "--vocab-size", "300",
                     "--out", str(tmp_path / "tok"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --text-files") and "--inputs" not in err, err


def test_fingerprints_change_with_the_content_only(corpus):
    from lineage_jax.tokenize import ByteTokenizer
    from lineage_jax.tokenize.bytelevel import load_tokenizer_json
    docs = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("doc*.txt"))]
    a, b = train_bpe(docs, 300), train_bpe(docs, 290)
    assert a.fingerprint() != b.fingerprint() and len(a.fingerprint()) == 64
    assert ByteTokenizer().fingerprint() == get_tokenizer("byte").fingerprint()           # a constant
    assert ByteTokenizer().fingerprint() not in (a.fingerprint(), ByteTokenizer(["<s>"]).fingerprint())
    path = a.save(str(Path(corpus).parent / "fp"))
    Path(path).write_text(json.dumps(json.loads(Path(path).read_text()), indent=4))    # reformatted, same content
    assert load_tokenizer_json(path).fingerprint() == a.fingerprint()
