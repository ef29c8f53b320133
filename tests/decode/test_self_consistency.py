"""Self-consistency (Wang et al. 2023): a majority vote over k=15 sampled answers beats a single
sample when each sample is right with probability 0.6; the vote's tie-breaking is deterministic."""
import numpy as np
import pytest

from lineage_jax.decode.self_consistency import (extract_answer, majority_vote, make_arithmetic_problems,
                                                 self_consistency)


def test_arithmetic_problems_are_correct_and_reproducible():
    probs = make_arithmetic_problems(200, seed=3)
    assert probs == make_arithmetic_problems(200, seed=3)
    assert probs != make_arithmetic_problems(200, seed=4)
    for prompt, answer in probs:
        assert prompt.endswith("=") and eval(prompt[:-1]) == answer   # noqa: S307 (our own digits)


def test_extract_answer():
    assert extract_answer("12+7=19") == 19
    assert extract_answer("3-8= -5") == -5
    assert extract_answer("6*7: 6*7 = 40+2 = 42") == 42
    assert extract_answer("the answer is 17") == 17
    assert extract_answer("no idea") is None


def test_majority_vote_and_deterministic_ties():
    assert majority_vote([3, 5, 3, 7]) == 3
    assert majority_vote([5, 3, 3, 5]) == 5          # tie: the first to appear wins
    assert majority_vote([3, 5, 5, 3]) == 3
    assert majority_vote([None, None, 4]) == 4       # unparsable answers do not vote
    assert majority_vote([None]) is None and majority_vote([]) is None
    assert all(majority_vote(["b", "a", "a", "b", "c"]) == "b" for _ in range(5))


def test_self_consistency_beats_a_single_sample():
    problems = make_arithmetic_problems(300, seed=0)
    rng = np.random.default_rng(0)

    def noisy_solver(answer):
        """Right with probability 0.6, otherwise a random wrong answer near the right one."""
        if rng.random() < 0.6:
            return answer
        wrong = answer + int(rng.integers(1, 6)) * (1 if rng.random() < 0.5 else -1)
        return wrong

    single = np.mean([noisy_solver(a) == a for _, a in problems])
    voted = np.mean([self_consistency(lambda i, a=a: noisy_solver(a), 15) == a for _, a in problems])
    assert 0.5 < single < 0.7
    assert voted > 0.95 and voted > single + 0.2
    with pytest.raises(ValueError):
        self_consistency(lambda i: 0, 0)
