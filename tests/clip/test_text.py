"""The word vocabulary: ids and <eos> out, the same words back, unknown words named, overflow refused."""
import numpy as np
import pytest

from lineage_jax.clip.text import WordVocab, words
from lineage_jax.tokenize.base import Tokenizer


def test_encode_decode_and_batch():
    v = WordVocab.build(["a small red circle", "a large blue square"])
    assert isinstance(v, Tokenizer) and v.vocab[:3] == ["<pad>", "<eos>", "<unk>"]
    ids = v.encode("A small, RED circle!")
    assert ids[-1] == v.eos_id and v.decode(ids) == "a small red circle"
    assert v.encode("a green circle")[1] == v.unk_id and v.unknown_words("a green circle") == ["green"]
    b = v.batch(["a red circle", "square"], context=5)
    assert b.shape == (2, 5) and b.dtype == np.int32
    assert list(b[1]) == [v.ids["square"], v.eos_id, 0, 0, 0]
    with pytest.raises(ValueError, match="at most 2"):
        v.batch(["a small red circle"], context=3)
    assert WordVocab.from_json(v.to_json()).fingerprint() == v.fingerprint()
    assert WordVocab.build(["a red circle"]).fingerprint() != v.fingerprint()
    assert words("photo-of a 3d") == ["photo", "of", "a", "3d"]
