"""NF4 (QLoRA §3): the derived code book equals bitsandbytes' (or the paper's appendix), block-wise
quantisation beats uniform int4 on normal weights, double quantisation costs 0.127 bits, packing
round-trips, the on-the-fly matmul equals dequantise-then-matmul."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.adapt import nf4, quant
from lineage_jax.config.errors import ConfigError

# QLoRA, Appendix E (the NF4 data type), as printed there: the reference when bitsandbytes is absent.
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_code_book_shape_zero_and_paper_values():
    v = np.asarray(nf4.NF4_VALUES)
    assert v.shape == (16,) and np.all(np.diff(v) > 0)
    assert v[0] == -1.0 and v[-1] == 1.0 and 0.0 in v        # exact zero, asymmetric halves (7 below, 8 above)
    assert (v < 0).sum() == 7 and (v > 0).sum() == 8
    np.testing.assert_allclose(v, PAPER_NF4, atol=1e-6)


def test_code_book_equals_bitsandbytes():
    F = pytest.importorskip("bitsandbytes.functional")
    table = F.get_4bit_type("nf4", device="cpu").numpy()
    np.testing.assert_allclose(np.asarray(nf4.NF4_VALUES), table, atol=1e-6)


def test_quantize_equals_bitsandbytes_codes():
    """Same codes and absmax as bitsandbytes' NF4 quantiser (no double quantisation) on normal weights."""
    F = pytest.importorskip("bitsandbytes.functional")
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(0).normal(0, 0.02, (64, 128)).astype(np.float32)
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4", compress_statistics=False)
    q = quant.quantize(jnp.asarray(w), "nf4", double=False)
    np.testing.assert_allclose(np.asarray(q.absmax).reshape(-1), state.absmax.numpy(), rtol=1e-6)
    ours, theirs = np.asarray(q.codes).reshape(-1), packed.numpy().reshape(-1)
    assert (ours == theirs).mean() > 0.999       # ties at a midpoint may round apart in float32
    deq = F.dequantize_4bit(packed, state).numpy()
    np.testing.assert_allclose(np.asarray(quant.dequantize(q)), deq, atol=1e-6)


def test_pack_round_trips():
    codes = jnp.asarray(np.random.default_rng(1).integers(0, 16, (3, 10)), jnp.uint8)
    packed = nf4.pack(codes)
    assert packed.shape == (3, 5) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(nf4.unpack(packed), codes)


def test_nf4_error_beats_int4_on_normal_weights():
    w = jax.random.normal(jax.random.key(0), (256, 512)) * 0.02
    err = {k: w - quant.dequantize(quant.quantize(w, k, double=False)) for k in ("nf4", "int4", "int8")}
    mse = {k: float(jnp.mean(e ** 2)) for k, e in err.items()}
    mae = {k: float(jnp.mean(jnp.abs(e))) for k, e in err.items()}
    assert mse["nf4"] < mse["int4"] and mae["nf4"] < mae["int4"]
    assert mse["int8"] < mse["nf4"] / 50


def test_double_quantisation_bits_and_error():
    assert nf4.bits_per_param(block2=None) == 0.5
    assert nf4.bits_per_param() == pytest.approx(0.127, abs=5e-4)
    w = jax.random.normal(jax.random.key(1), (128, 1024)) * 0.02
    single, double = quant.quantize(w, "nf4", double=False), quant.quantize(w, "nf4")
    n = w.size
    assert 8 * single.nbytes() / n - 4 == pytest.approx(0.5)
    assert 8 * double.nbytes() / n - 4 == pytest.approx(nf4.bits_per_param(), abs=2e-3)
    # the second level adds little to the 4-bit error
    e1 = float(jnp.mean((w - quant.dequantize(single)) ** 2))
    e2 = float(jnp.mean((w - quant.dequantize(double)) ** 2))
    assert e2 < 1.05 * e1


def test_zero_and_block_checks():
    q = quant.quantize(jnp.zeros((2, 64)), "nf4")
    np.testing.assert_array_equal(quant.dequantize(q), 0.0)
    with pytest.raises(ConfigError, match="multiple of the block size 64"):
        quant.quantize(jnp.zeros((3, 48)), "nf4")
    q = quant.quantize(jnp.ones((3, 4, 16)), "nf4")                  # blocks over the last two axes
    assert q.codes.shape == (3, 32) and q.fold == 2
    np.testing.assert_array_equal(quant.dequantize(q), 1.0)
    with pytest.raises(ConfigError, match="allowed nf4, int8, int4"):
        quant.quantize(jnp.zeros((4, 64)), "fp3")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_qmatmul_equals_dequantise_then_matmul(dtype):
    k1, k2 = jax.random.split(jax.random.key(2))
    w = jax.random.normal(k1, (32, 4, 64)) * 0.02           # [D, H, K] like a query kernel
    x = jax.random.normal(k2, (2, 5, 32))
    q = quant.quantize(w, "nf4")
    got = jax.jit(lambda x, q: quant.qmatmul(x, q, dtype=dtype))(x, q)
    want = jax.jit(lambda x, w: quant.matmul(x, w, dtype=dtype))(x, jax.jit(quant.dequantize, static_argnums=1)(q, dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
