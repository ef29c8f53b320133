"""The LSTM cell and its ``lax.scan`` (lineage_jax/foundations/lstm.py) = ``torch.nn.LSTM`` with the same
weights (gate order i, f, g, o; two biases), = ``flax.linen.OptimizedLSTMCell`` given its weights, and
masking: a padded sequence ends in the state of its last real token, in both directions."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.foundations import lstm


def test_sequence_equals_torch_lstm_with_the_same_weights():
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    B, T, I, H = 3, 7, 5, 6
    ref = torch.nn.LSTM(I, H, batch_first=True, bidirectional=True)
    x = torch.randn(B, T, I)
    h0, c0 = torch.randn(2, B, H), torch.randn(2, B, H)
    with torch.no_grad():
        out, (hT, cT) = ref(x, (h0, c0))
    w = lambda name: getattr(ref, name).detach().numpy()
    fwd = lstm.from_torch(w("weight_ih_l0"), w("weight_hh_l0"), w("bias_ih_l0"), w("bias_hh_l0"))
    bwd = lstm.from_torch(*(w(f"{n}_l0_reverse") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    xs = jnp.asarray(x.numpy())
    (hf, cf), ys_f = lstm.scan(fwd, xs, (jnp.asarray(h0[0].numpy()), jnp.asarray(c0[0].numpy())))
    (hb, cb), ys_b = lstm.scan(bwd, xs, (jnp.asarray(h0[1].numpy()), jnp.asarray(c0[1].numpy())), reverse=True)
    np.testing.assert_allclose(np.concatenate([ys_f, ys_b], -1), out.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack([hf, hb]), hT.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack([cf, cb]), cT.numpy(), rtol=1e-5, atol=1e-6)
    # torch's gate order matters: swapping f and g blocks gives another function
    swapped = {k: (jnp.concatenate([v[..., :H], v[..., 2 * H:3 * H], v[..., H:2 * H], v[..., 3 * H:]], -1))
               for k, v in fwd.items()}
    assert not np.allclose(lstm.scan(swapped, xs)[1], lstm.scan(fwd, xs)[1], atol=1e-3)


def test_cell_equals_flax_optimized_lstm_cell():
    I, H, B = 4, 5, 3
    mod = nn.OptimizedLSTMCell(H)
    x = jax.random.normal(jax.random.key(0), (B, I))
    carry = (jax.random.normal(jax.random.key(1), (B, H)), jax.random.normal(jax.random.key(2), (B, H)))
    variables = mod.init(jax.random.key(3), (carry[1], carry[0]), x)     # flax's carry is (c, h)
    p = variables["params"]
    # flax: gates i, f, g, o each a Dense; the input kernels have no bias, the hidden ones do
    params = {"w_ih": jnp.concatenate([p[f"i{g}"]["kernel"] for g in "ifgo"], -1),
              "w_hh": jnp.concatenate([p[f"h{g}"]["kernel"] for g in "ifgo"], -1),
              "b": jnp.concatenate([p[f"h{g}"]["bias"] for g in "ifgo"], -1)}
    (c_ref, h_ref), y_ref = mod.apply(variables, (carry[1], carry[0]), x)
    h, c = lstm.cell(params, carry, x)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, y_ref, rtol=1e-5, atol=1e-6)


def test_masked_steps_keep_the_state_of_the_last_real_token_in_both_directions():
    I, H = 3, 4
    fwd, bwd = lstm.init(jax.random.key(0), I, H), lstm.init(jax.random.key(1), I, H)
    xs = jax.random.normal(jax.random.key(2), (2, 6, I))
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    ann, f, b = lstm.bidirectional(fwd, bwd, xs, mask)
    (hf, _), _ = lstm.scan(fwd, xs[:1, :4])
    (hb, _), yb = lstm.scan(bwd, xs[:1, :4], reverse=True)
    np.testing.assert_allclose(f[0][0], hf[0], rtol=1e-6)
    np.testing.assert_allclose(b[0][0], hb[0], rtol=1e-6)
    np.testing.assert_allclose(ann[0, :4, H:], yb[0], rtol=1e-6)
    np.testing.assert_array_equal(ann[0, 4:], 0.0)
    assert not np.allclose(f[0][1], hf[0])            # the unpadded row read all six tokens
