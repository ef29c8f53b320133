"""The synthetic tasks: deterministic from the seed, noise only on the training labels, in its proportion."""
import numpy as np

from lineage_jax.foundations import tasks


def test_teacher_task_noise_is_on_the_training_split_only():
    clean = tasks.teacher_task(3, 4000, 500, inputs=8, classes=4, label_noise=0.0)
    noisy = tasks.teacher_task(3, 4000, 500, inputs=8, classes=4, label_noise=0.3)
    np.testing.assert_array_equal(clean[0], noisy[0])
    np.testing.assert_array_equal(clean[3], noisy[3])                     # the test labels stay clean
    changed = float((clean[1] != noisy[1]).mean())
    assert abs(changed - 0.3 * 3 / 4) < 0.03                               # a redrawn label keeps its class 1/4 of the time
    assert len(np.unique(np.asarray(clean[1]))) == 4
    again = tasks.teacher_task(3, 4000, 500, inputs=8, classes=4, label_noise=0.3)
    np.testing.assert_array_equal(again[1], noisy[1])


def test_random_labels_are_uniform_and_unrelated_to_the_inputs():
    x, y = tasks.random_labels(0, 5000, 6, 5)
    counts = np.bincount(np.asarray(y), minlength=5)
    assert x.shape == (5000, 6) and counts.min() > 900
    w = np.linalg.lstsq(np.asarray(x), np.eye(5)[np.asarray(y)], rcond=None)[0]   # a linear fit explains nothing
    assert float((np.asarray(x) @ w).argmax(-1).__eq__(np.asarray(y)).mean()) < 0.25
