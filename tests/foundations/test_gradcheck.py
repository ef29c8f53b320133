"""Central differences: O(h²) accurate in float64; flatten/unflatten round-trip; the relative error."""
import numpy as np

from lineage_jax.foundations import gradcheck


def test_central_differences_of_a_known_function():
    params = {"a": np.array([0.3, -1.2]), "b": [np.array([[2.0]])]}
    f = lambda p: np.sin(p["a"]).sum() * p["b"][0][0, 0] ** 3
    g = gradcheck.central_differences(f, params)
    np.testing.assert_allclose(g["a"], np.cos(params["a"]) * 8.0, rtol=1e-9)
    np.testing.assert_allclose(g["b"][0], [[3 * 4.0 * np.sin(params["a"]).sum()]], rtol=1e-9)


def test_flatten_round_trip_and_relative_error():
    tree = [{"w": np.arange(6.0).reshape(2, 3), "b": np.array([7.0])}, {"w": np.ones((1, 2)), "b": np.zeros(2)}]
    flat = gradcheck.flatten(tree)
    assert flat.tolist() == [7.0, 0, 1, 2, 3, 4, 5, 0, 0, 1, 1]          # keys in sorted order: b, w
    back = gradcheck.unflatten(flat, tree)
    for x, y in zip(gradcheck.flatten(back), flat):
        assert x == y
    assert gradcheck.relative_error(tree, back) == 0.0
    assert abs(gradcheck.relative_error(np.array([1.0, 0.0]), np.array([0.0, 1.0])) - np.sqrt(2)) < 1e-12
