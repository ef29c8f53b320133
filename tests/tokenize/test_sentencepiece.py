"""SentencePiece unigram and BPE (Kudo & Richardson 2018) behind the Tokenizer protocol."""
import hashlib
import inspect

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lineage_jax.tokenize import Tokenizer, get_tokenizer, load

pytest.importorskip("sentencepiece")
from lineage_jax.tokenize.spm import SentencePieceTokenizer, train_sentencepiece  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    import collections, os, string, textwrap
    docs = [inspect.getdoc(obj) for m in (collections, os, string, textwrap)
            for name, obj in sorted(vars(m).items()) if not name.startswith("_") and inspect.getdoc(obj)]
    return docs + ["one document<|endoftext|>another one"] * 5


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp(request, corpus):
    return train_sentencepiece(corpus, 600, model_type=request.param)


def test_protocol_specials_and_eos(sp):
    assert isinstance(sp, Tokenizer)
    assert sp.vocab_size == 600
    assert sp.eos_id == sp.sp.piece_to_id("</s>") == 2                  # from the model: </s>
    special = sp.sp.piece_to_id("<|endoftext|>")
    ids = sp.encode("a<|endoftext|>b")
    assert special in ids                                                 # user-defined: never split
    assert sp.decode(ids) == "a<|endoftext|>b"
    assert len(sp.encode("the function returns the")) < len("the function returns the") / 2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_roundtrip_valid_unicode(sp, s):
    """Identity normalisation + kept whitespace + byte fallback: lossless on valid Unicode."""
    assert sp.decode(sp.encode(s)) == s


def test_save_load_and_get_tokenizer(sp, tmp_path):
    path = sp.save(str(tmp_path / "spm"))
    assert path.endswith("spm.model")
    for again in (get_tokenizer(str(tmp_path / "spm")), load(path)):
        assert isinstance(again, SentencePieceTokenizer) and again.name == sp.name
        assert again.encode("héllo wörld 😀") == sp.encode("héllo wörld 😀")
        assert again.fingerprint() == sp.fingerprint() == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_bad_input_is_one_clear_line(sp):
    with pytest.raises(TypeError, match="tokenizer input must be str, got bytes"):
        sp.encode(b"abc")
    with pytest.raises(ValueError, match="SentencePiece input must be valid Unicode: surrogates not allowed"):
        sp.encode("a\ud800")
    with pytest.raises(ValueError, match=r"token id 600 is outside the SentencePiece vocabulary \[0, 600\)"):
        sp.decode([600])
    with pytest.raises(ValueError, match="model_type='char'"):
        train_sentencepiece(["x"], 10, model_type="char")
