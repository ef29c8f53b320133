"""Prompt ensembling, zero-shot prediction and the linear probe: the probe's L-BFGS fit equals
scikit-learn's LogisticRegression (same objective), and prompts are built class-major."""
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.clip import zeroshot


def test_prompts_and_ensemble():
    assert zeroshot.prompts(["red circle", "blue square"], ("a small {}", "a large {}")) == [
        "a small red circle", "a large red circle", "a small blue square", "a large blue square"]
    with pytest.raises(ValueError, match="exactly one"):
        zeroshot.prompts(["x"], ("no slot",))
    e = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0], [0, 0, 3.0]])
    ens = zeroshot.ensemble(e, 2)                     # class 0: mean of e0, e1; class 1: z
    np.testing.assert_allclose(ens, [[2 ** -0.5, 2 ** -0.5, 0], [0, 0, 1]], rtol=1e-6)
    imgs = jnp.array([[0.9, 1.0, 0.1], [0.1, 0.0, -1.0], [0.0, 0.1, 5.0]])
    assert list(zeroshot.predict(imgs, ens)) == [0, 0, 1]
    assert zeroshot.accuracy(zeroshot.predict(imgs, ens), [0, 1, 1]) == pytest.approx(2 / 3)


def test_class_embeddings_use_every_template():
    seen = []

    def encode(texts):
        seen.extend(texts)
        return jnp.eye(4)[jnp.arange(len(texts)) % 4]
    out = zeroshot.class_embeddings(encode, ["a", "b"], ("x {}", "y {}"))
    assert seen == ["x a", "y a", "x b", "y b"] and out.shape == (2, 4)


def test_probe_equals_sklearn_logistic_regression():
    sk = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    N, D, C, l2 = 120, 6, 3, 1e-2
    y = rng.integers(0, C, N)
    x = rng.standard_normal((N, D)) + 1.5 * np.eye(C, D)[y]
    w, b = zeroshot.fit_probe(x, y, C, l2=l2, steps=100)
    ref = sk.LogisticRegression(C=1 / (l2 * N), tol=1e-10, max_iter=5000).fit(x, y)
    ours = np.asarray(jnp.asarray(x, jnp.float32) @ w + b)
    theirs = ref.decision_function(x)
    # softmax is shift-invariant per row: compare centred logits
    np.testing.assert_allclose(ours - ours.mean(1, keepdims=True), theirs - theirs.mean(1, keepdims=True),
                               atol=2e-3)
    assert zeroshot.accuracy(zeroshot.probe_predict((w, b), x), ref.predict(x)) == 1.0


def test_best_prompt_keeps_the_class_where_the_mean_ensemble_loses_it():
    # two templates naming opposite sizes point apart; class 1's two prompts do not cancel, so its mean
    # keeps a large size component that outweighs the weak shape axis (2 for class 0, 3 for class 1)
    s0, s1 = np.array([0, 0, 0.3, 0]), np.array([0, 0, 0, 0.3])
    prompts = jnp.array([[1.0, 0, 0, 0] + s0, [-1.0, 0, 0, 0] + s0, [1.0, 0, 0, 0] + s1, [-0.6, 0.8, 0, 0] + s1])
    img = jnp.array([[1.0, 0, 0, 0] + s0])                 # a small class-0 image
    assert list(zeroshot.predict_max(img, prompts, 2)) == [0]
    assert list(zeroshot.predict(img, zeroshot.ensemble(prompts, 2))) == [1]
