"""GPT-2 byte-level BPE (Radford et al. 2019): our teaching encoder/trainer against the
``tokenizers`` library, token by token; round trips for any string; tokenizer.json both ways."""
import inspect
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lineage_jax.tokenize import Tokenizer, get_tokenizer, load
from lineage_jax.tokenize.bpe_train import count_words, train_bpe
from lineage_jax.tokenize.bytelevel import GPT2_PATTERN, ByteLevelBPETokenizer, bytes_to_unicode

pytest.importorskip("regex")          # \p{L} in GPT-2's pattern (installed with transformers / .[ref])


def tk():
    """The peer library: tests that compare with it skip without `pip install -e '.[ref]'`."""
    return pytest.importorskip("tokenizers")


SPECIALS = ["<|endoftext|>", "<|pad|>"]


def _docstrings(modules):
    out = []
    for m in modules:
        for name, obj in sorted(vars(m).items()):
            doc = None if name.startswith("_") else inspect.getdoc(obj)
            if doc:
                out.append(doc)
    return out


@pytest.fixture(scope="module")
def corpus():
    import collections, json as json_mod, os, random, re, string, textwrap
    return _docstrings([collections, json_mod, os, random, re, string, textwrap])


@pytest.fixture(scope="module")
def held_out():
    """Different text: source code, other docstrings, and everything GPT-2's regex cares about."""
    import argparse, fractions
    return [inspect.getsource(fractions)[:20000], *_docstrings([argparse])[:40],
            "I'm sure they'll say it's 100% fine—isn't it?  'S 'T 'RE's\n\n\n   \t trailing   ",
            "Ünïcödé: naïve café 日本語のテキスト 한국어 العربية עברית Ελληνικά 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 e\u0301 a\u0308",
            "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷 and controls \x00\x01\x1b[0m\x7f\x85\xa0\u2028\u3000 mixed",
            "specials <|endoftext|>inside<|pad|><|endoftext|> text <|endoftext| <|pad>",
            "x = [1, 2.5e-3, 0x1F]  # numbers ١٢٣ ½ ²  \r\n\tif a != b: return None"]


@pytest.fixture(scope="module")
def hf(corpus):
    """A byte-level BPE trained by the tokenizers library alone."""
    tk()
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


@pytest.fixture(scope="module")
def mine(corpus):
    """A byte-level BPE trained by our teaching trainer alone."""
    return train_bpe(corpus, 1000, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def ours(hf, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_bpe")
    hf.save(str(d / "tokenizer.json"))
    return load(str(d))                                   # a directory holding tokenizer.json


def hf_ids(hf, text):
    return hf.encode(text, add_special_tokens=False).ids


# Lone surrogates (Cs) are refused by tokenizers. Unassigned code points (Cn) are left out: the
# `regex` package's newer Unicode tables call some of them \p{L} (e.g. U+3D000), tokenizers' don't.
no_surrogates = st.text(st.characters(blacklist_categories=("Cs", "Cn")))
ascii_ish = st.lists(st.sampled_from(list("ab cd'sltrevm\n\t 0123!?.,éü日😀") + SPECIALS + ["'s ", "'ll ", "  "])).map("".join)


def test_byte_to_unicode_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord("~")] == "~" and table[0xA1] == "¡" and table[0xFF] == "ÿ"
    assert table[0] == chr(256) and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0xAD] == chr(256 + 67)
    assert sum(table[b] == chr(b) for b in range(256)) == 188


def test_byte_table_is_tokenizers_alphabet():
    assert set(bytes_to_unicode().values()) == set(tk().pre_tokenizers.ByteLevel.alphabet())


def test_pre_tokenisation_is_gpt2s():
    tok = ByteLevelBPETokenizer({}, [])
    assert [w.replace("Ġ", " ") for w in tok.pre_tokenize("Hello world's  42 cats!!\n")] == \
        ["Hello", " world", "'s", " ", " 42", " cats", "!!", "Ċ"]


@settings(max_examples=150, deadline=None)
@given(st.one_of(no_surrogates, ascii_ish))
def test_pre_tokenisation_equals_tokenizers(s):
    ref = tk().pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(s)
    assert ByteLevelBPETokenizer({}, []).pre_tokenize(s) == [w for w, _ in ref]


def test_loaded_encodes_token_by_token_like_tokenizers(hf, ours, held_out):
    assert isinstance(ours, Tokenizer)
    assert ours.vocab_size == hf.get_vocab_size() == 1000
    assert ours.eos_id == hf.token_to_id("<|endoftext|>") == 0
    for text in held_out:
        ref = hf.encode(text, add_special_tokens=False)
        assert ours.encode(text) == ref.ids, text[:80]
        assert [ours.id_to_token[i] for i in ours.encode(text)] == ref.tokens
        assert ours.decode(ours.encode(text)) == text
    assert ours.encode("a<|endoftext|>b")[1] == 0 and ours.encode("<|pad|>") == [1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(no_surrogates, ascii_ish))
def test_any_text_encodes_like_tokenizers(hf, ours, s):
    assert ours.encode(s) == hf_ids(hf, s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(), ascii_ish))               # any code points, lone surrogates included
def test_roundtrip_any_string(mine, s):
    ids = mine.encode(s)
    assert all(0 <= i < mine.vocab_size for i in ids)
    assert mine.decode(ids) == s


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(2, 999), max_size=30))
def test_decode_of_any_ids_equals_tokenizers(hf, ours, ids):
    """Invalid UTF-8 becomes U+FFFD exactly as tokenizers' lossy decode does (specials aside;
    only byte runs that encode a surrogate, ED A0..BF xx, differ: we keep the surrogate)."""
    raw = b"".join(bytes(bytes_to_unicode_inv[c] for c in ours.id_to_token[i]) for i in ids)
    if b"\xed" in raw:
        return
    assert ours.decode(ids) == hf.decode(ids)


bytes_to_unicode_inv = {c: b for b, c in bytes_to_unicode().items()}


def test_teaching_trainer_learns_tokenizers_merges(corpus, hf):
    ref = json.loads(hf.to_str())["model"]
    ref_merges = [tuple(m) for m in ref["merges"]]
    mine = train_bpe(corpus, 1000, special_tokens=SPECIALS, min_frequency=2)
    assert mine.merges == ref_merges
    assert {**mine.vocab, **mine.added_tokens} == ref["vocab"]
    fast = train_bpe(corpus, 1000, special_tokens=SPECIALS, min_frequency=2, fast=True)
    assert fast.merges == ref_merges


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("abcab ab'.\n1é")), max_size=30), min_size=1, max_size=8),
       st.integers(257, 290), st.integers(0, 3))
def test_training_equals_tokenizers_even_with_ties(texts, vocab_size, min_frequency):
    """Small corpora are full of tied counts: the tie-break (smaller token-id pair) is the
    tokenizers trainer's, so merges agree exactly, not just up to ties."""
    tk()
    mine = train_bpe(texts, vocab_size, min_frequency=min_frequency)
    ref = train_bpe(texts, vocab_size, min_frequency=min_frequency, fast=True)
    assert mine.merges == ref.merges and mine.vocab == ref.vocab


def test_saved_tokenizer_loads_in_tokenizers(corpus, held_out, tmp_path):
    mine = train_bpe(corpus, 800, special_tokens=SPECIALS)
    path = mine.save(str(tmp_path / "bpe"))
    assert path.endswith("tokenizer.json")
    theirs = tk().Tokenizer.from_file(path)
    again = get_tokenizer(str(tmp_path / "bpe"))
    assert isinstance(again, ByteLevelBPETokenizer) and again.merges == mine.merges
    for text in held_out:
        assert mine.encode(text) == hf_ids(theirs, text) == again.encode(text)
        assert theirs.decode(mine.encode(text), skip_special_tokens=False) == text
    assert mine.encode_batch(held_out, fast=True) == mine.encode_batch(held_out)


def test_custom_split_pattern_and_ignore_merges(hf, held_out, tmp_path):
    """A Sequence[Split(Regex), ByteLevel(use_regex=false)] pre-tokenizer (as newer GPT-style
    tokenizer.json files use) and ignore_merges load and encode like tokenizers."""
    doc = json.loads(hf.to_str())
    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    doc["model"]["ignore_merges"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    theirs = tk().Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    mine = load(str(tmp_path))
    assert mine.pattern == pattern and mine.ignore_merges
    for text in held_out:
        assert mine.encode(text) == hf_ids(theirs, text)


def test_count_words_cuts_specials_out():
    counts = count_words(["hi<|endoftext|>hi there"])
    assert counts == {"hi": 2, "Ġthere": 1}


def test_bad_input_is_one_clear_line(mine, tmp_path):
    with pytest.raises(TypeError, match="tokenizer input must be str, got bytes"):
        mine.encode(b"abc")
    with pytest.raises(TypeError, match="tokenizer input must be str, got int"):
        train_bpe([1], 300)
    with pytest.raises(ValueError, match=r"token id 5000 is outside .*\[0, 1000\)"):
        mine.decode([5000])
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}))
    with pytest.raises(ValueError, match="model.type='WordPiece': only byte-level BPE"):
        load(str(tmp_path))
    with pytest.raises(ValueError, match="data.tokenizer='nowhere/at/all'"):
        get_tokenizer("nowhere/at/all")
    assert GPT2_PATTERN.startswith("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+")


def test_trained_tokenizer_without_peers(mine, held_out, tmp_path):
    """Our trainer, save and load need neither tokenizers nor transformers."""
    assert isinstance(mine, Tokenizer) and (mine.vocab_size, mine.eos_id) == (1000, 0)
    assert mine.encode("<|pad|>") == [1] and len(mine.merges) == 1000 - 2 - 256
    again = get_tokenizer(str(tmp_path)) if mine.save(str(tmp_path)) else None
    assert isinstance(again, ByteLevelBPETokenizer)
    assert again.name == mine.name and mine.name.startswith("bpe-")     # a digest: data caches key on it
    assert train_bpe(["other text"], 300).name != mine.name
    for text in held_out:
        assert again.encode(text) == mine.encode(text)
        assert mine.decode(mine.encode(text)) == text
