"""The byte tokenizer: every string round-trips; specials sit after the 256 bytes."""
import pytest
from hypothesis import given, settings, strategies as st

from lineage_jax.tokenize import ByteTokenizer, Tokenizer, get_tokenizer


@settings(max_examples=300, deadline=None)
@given(st.text())                          # any code points, lone surrogates included
def test_roundtrip_any_string(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == s


def test_interface_and_specials():
    tok = get_tokenizer("byte")
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("<|endoftext|>") == list(b"<|endoftext|>")        # text never becomes a special
    assert tok.decode([104, 105, 256, 33]) == "hi<|endoftext|>!"
    assert tok.decode([0xC3]) == "\ufffd"                                 # invalid UTF-8 is replaced, not raised


def test_bad_input_is_one_clear_line():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="tokenizer input must be str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match=r"token id 999 is outside .*\[0, 257\)"):
        tok.decode([999])
    with pytest.raises(ValueError, match="data.tokenizer='gpt4'"):
        get_tokenizer("gpt4")
