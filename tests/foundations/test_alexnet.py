"""AlexNet's pieces (Krizhevsky et al. 2012): LRN = its formula (§3.3) = torch.nn.LocalResponseNorm with α·n;
overlapping pooling; the two-GPU split (§3.2, Fig. 2) on a 2-device mesh = grouped convolutions on one
device, with all-gathers only before the cross-tower layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

from lineage_jax.foundations import alexnet as ax


def _lrn_loops(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
    a = np.asarray(a, np.float64)
    out, N = np.empty_like(a), a.shape[-1]
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        out[..., i] = a[..., i] / (k + alpha * (a[..., lo:hi + 1] ** 2).sum(-1)) ** beta
    return out


@pytest.mark.parametrize("n,C", [(5, 12), (3, 4), (5, 3)])
def test_lrn_is_the_papers_formula(n, C):
    a = 20.0 * jax.random.normal(jax.random.key(n + C), (2, 3, 3, C))      # big enough that α·Σa² matters
    np.testing.assert_allclose(ax.lrn(a, n=n, alpha=1e-3), _lrn_loops(a, n=n, alpha=1e-3), rtol=1e-5)


def test_lrn_equals_torch_with_alpha_times_n():
    torch = pytest.importorskip("torch")
    a = 30.0 * jax.random.normal(jax.random.key(0), (2, 4, 5, 7))
    ours = ax.lrn(a, k=2.0, n=5, alpha=1e-4, beta=0.75)
    t = torch.nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)(torch.tensor(np.asarray(a)).permute(0, 3, 1, 2))
    np.testing.assert_allclose(t.permute(0, 2, 3, 1).numpy(), ours, rtol=1e-5)
    t_same_alpha = torch.nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)(torch.tensor(np.asarray(a)).permute(0, 3, 1, 2))
    assert not np.allclose(t_same_alpha.permute(0, 2, 3, 1).numpy(), ours, rtol=1e-4)


def test_overlapping_pooling():
    x = jnp.arange(49.0).reshape(1, 7, 7, 1)
    y = ax.max_pool(x)
    assert y.shape == (1, 3, 3, 1) and y[0, :, :, 0].tolist() == [[16, 18, 20], [30, 32, 34], [44, 46, 48]]


LAYOUT = [("conv", True), ("conv", False), ("conv", True), ("conv", False), ("dense", True), ("dense", True)]


def _params(key):
    shapes = [(3, 3, 1, 8), (3, 3, 4, 12), (3, 3, 12, 8), (3, 3, 4, 8), (8, 16), (16, 10)]   # 8×8 input: 8→3→1
    keys = jax.random.split(key, len(shapes))
    return [{"w": jax.random.normal(k, s) * (2.0 / np.prod(s[:-1])) ** 0.5, "b": 0.1 * jnp.ones(s[-1])}
            for k, s in zip(keys, shapes)]


def test_two_towers_on_two_devices_equal_one_device():
    params = ax.tower_params(_params(jax.random.key(1)), LAYOUT)
    x = jax.random.normal(jax.random.key(2), (5, 8, 8, 1))
    one = jax.jit(lambda p, x: ax.towers(p, x, LAYOUT))(params, x)     # jitted: one compile, not one per op
    assert one.shape == (5, 10)
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("tower",), axis_types=(AxisType.Auto,))
    specs = jax.tree.map(lambda a: P(*[None] * (a.ndim - 1), "tower"), params)
    sharded = jax.jit(jax.shard_map(lambda p, x: ax.tower_body(p, x, LAYOUT, "tower"), mesh=mesh,
                                    in_specs=(specs, P()), out_specs=P(None, "tower"), check_vma=False))
    np.testing.assert_allclose(sharded(params, x), one, rtol=1e-5, atol=1e-5)
    # the only communication: one all-gather before each cross layer after the first (conv 3, dense 1, dense 2)
    hlo = sharded.lower(params, x).compile().as_text()
    assert hlo.count("all-gather-start(") + hlo.count("all-gather(") == 3
    # and a within-tower layer really is within: tower 0's outputs do not depend on tower 1's conv-1 maps
    grad = jax.jit(jax.grad(lambda w: ax.towers([{**params[0], "w": w}, *params[1:2]], x, LAYOUT[:2])[..., :6].sum()))
    assert float(jnp.abs(grad(params[0]["w"])[..., 4:]).max()) == 0.0


def test_uneven_towers_are_refused():
    with pytest.raises(ValueError, match="not divisible into 2 towers"):
        ax.tower_params([{"w": jnp.ones((3, 3, 1, 5)), "b": jnp.ones(5)}], LAYOUT[:1])
