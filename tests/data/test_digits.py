"""The sklearn_digits TFDS builder: scikit-learn's bundled 8×8 digits, prepared with no download, split
by a stable hash; a missing scikit-learn is one line naming the fix."""
import importlib.util

import numpy as np
import pytest

from lineage_jax.config import UserError
from lineage_jax.data import digits


def _need_digits():
    try:
        return digits.digits_csv()
    except UserError:
        pytest.skip("scikit-learn (its bundled digits file) is not installed")


def test_builder_serves_every_image_once_split_by_hash(tmp_path):
    _need_digits()
    images, labels = digits.read_digits()
    assert images.shape == (1797, 8, 8) and images.max() == 16 and np.bincount(labels).min() >= 170
    data = digits.load_digits(tmp_path)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    assert xtr.shape[1:] == (8, 8, 1) and xtr.dtype == np.uint8 and len(ytr) + len(yte) == 1797
    test_rows = [i for i in range(1797) if digits.is_test(i)]
    assert len(yte) == len(test_rows) and 0.15 < len(test_rows) / 1797 < 0.25
    np.testing.assert_array_equal(xte[..., 0], images[test_rows])
    np.testing.assert_array_equal(yte, labels[test_rows])
    again = digits.load_digits(tmp_path)                           # prepared once, read back the same
    np.testing.assert_array_equal(again["train"][1], ytr)


def test_missing_scikit_learn_is_one_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"^the digits images ship with scikit-learn, which is not installed: "
                                        r"pip install scikit-learn"):
        digits.digits_csv()
