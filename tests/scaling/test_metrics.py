"""The emergence metrics on hand-made answers: exact match is all-or-nothing, the others are graded."""
import numpy as np
import pytest

from lineage_jax.scaling import metrics as M


def test_exact_match_vs_token_accuracy():
    target = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    pred = np.array([[1, 2, 3, 4], [1, 2, 3, 5], [9, 9, 9, 9]])
    assert M.exact_match(pred, target).tolist() == [1, 0, 0]
    assert M.token_accuracy(pred, target).tolist() == [1, 0.75, 0]


@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("", "abc", 3), ("1234", "2341", 2), ("12", "12", 0)])
def test_edit_distance(a, b, d):
    assert M.edit_distance(a, b) == d == M.edit_distance(b, a)


def test_answer_log_likelihood_is_mean_log_softmax_of_the_target():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    assert M.answer_log_likelihood(logits, np.array([[0, 1]]))[0] == pytest.approx((np.log(0.5) + np.log(0.8)) / 2)


def test_exact_match_of_independent_errors_is_p_to_the_l():
    rng = np.random.default_rng(0)
    target = np.zeros((20000, 5), int)
    pred = (rng.random(target.shape) > 0.8).astype(int)       # each position right with p = 0.8
    per_position = (pred == target).mean(0)
    assert M.exact_match(pred, target).mean() == pytest.approx(M.independent_exact_match(per_position), abs=0.01)
    assert M.independent_exact_match(per_position) == pytest.approx(0.8 ** 5, abs=0.01)
