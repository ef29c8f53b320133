"""The judge of generated digits: trained briefly on the real training digits it recognises the held-out
ones; real digits score their own accuracy and a Fréchet distance of zero to themselves; pure noise is
far from them."""
import numpy as np
import pytest

from lineage_jax.config import UserError
from lineage_jax.data import digits
from lineage_jax.imagegen import scorer as J
from lineage_jax.imagegen.data import digit_images, to_signed


@pytest.fixture(scope="module")
def data():
    try:
        digits.digits_csv()
    except UserError:
        pytest.skip("scikit-learn (its bundled digits file) is not installed")
    return digit_images()


def test_digits_in_signed_range():
    np.testing.assert_array_equal(to_signed(np.array([0, 8, 16], np.uint8)), [-1.0, 0.0, 1.0])


def test_the_judge_recognises_held_out_digits_and_noise_is_far(data):
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    assert xtr.shape[1:] == (8, 8, 1) and xtr.min() == -1.0 and xtr.max() == 1.0
    judge = J.train_scorer((xtr, ytr), (xte, yte), how=J.ScorerTraining(steps=150))
    assert judge.test_accuracy > 0.85
    _, ref = J.predict(judge, xte)
    real = J.score(judge, xte, yte, ref)
    assert real["accuracy"] == pytest.approx(judge.test_accuracy) and real["fid"] == pytest.approx(0.0, abs=1e-6)
    train_half = J.score(judge, xtr[:300], ytr[:300], ref)
    noise = J.score(judge, np.random.default_rng(0).uniform(-1, 1, (300, 8, 8, 1)), ytr[:300], ref)
    assert noise["fid"] > 5 * train_half["fid"] and noise["accuracy"] < 0.4
