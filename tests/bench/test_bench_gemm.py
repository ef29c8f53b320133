"""``lineage bench gemm``: the products read from compiled HLO are the program's products.

The parse is checked against what it claims to describe: each ``Dot`` rebuilt as an einsum
computes what ``lax.dot_general`` computes (numpy as the peer), the parsed products of a
program of known matmuls are exactly those matmuls, their FLOPs are XLA's cost analysis, and
the train step's products cover every parameter's forward and backward matmuls.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lineage_jax import cli
from lineage_jax.bench import _cost_flops, _jax_step, gemm, matmul_params
from lineage_jax.config import load_config

CASES = [  # (lhs shape, rhs shape, dimension numbers)
    ((6, 5), (5, 7), (((1,), (0,)), ((), ()))),
    ((6, 5), (7, 5), (((1,), (1,)), ((), ()))),
    ((5, 6), (5, 7), (((0,), (0,)), ((), ()))),
    ((2, 3, 4, 5), (2, 3, 5, 6), (((3,), (2,)), ((0, 1), (0, 1)))),
    ((4, 2, 5, 3), (3, 5, 4, 2), (((1, 2), (3, 1)), ((0,), (2,)))),   # batch dim not leading, two contracted
]


@pytest.mark.parametrize("lhs,rhs,dims", CASES)
def test_dot_einsum_is_dot_general(lhs, rhs, dims):
    d = gemm.Dot("f32", lhs, rhs, dims[0][0], dims[0][1], dims[1][0], dims[1][1])
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(lhs).astype(np.float32), rng.standard_normal(rhs).astype(np.float32)
    want = np.asarray(lax.dot_general(a, b, d.dimension_numbers, precision=lax.Precision.HIGHEST))
    assert d.out_shape == want.shape
    np.testing.assert_allclose(np.einsum(d.einsum(), a, b), want, rtol=1e-5, atol=1e-5)


def test_parsed_products_are_the_programs_matmuls():
    def f(x, w, q, k):
        return jnp.tanh(x @ w).sum() + jnp.einsum("bhqk,bhsk->bhqs", q, k).sum()
    args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((2, 3, 16, 8)), jnp.ones((2, 3, 24, 8)))
    compiled = jax.jit(f).lower(*args).compile()
    dots = gemm.dots_in_hlo(compiled.as_text())
    shapes = sorted((d.lhs, d.rhs, n) for d, n in dots.items())
    assert shapes == sorted([((64, 32), (32, 48), 1), ((2, 3, 16, 8), (2, 3, 24, 8), 1)])
    assert sum(d.flops * n for d, n in dots.items()) == 2 * 64 * 32 * 48 + 2 * 6 * 16 * 24 * 8
    # XLA counts the same FLOPs for the products, plus its sums over their outputs
    extra = 64 * 48 + 6 * 16 * 24
    assert 0 <= _cost_flops(compiled) - sum(d.flops * n for d, n in dots.items()) <= 4 * extra


SMALL = ["model.layers=2", "model.width=64", "model.heads=2", "model.context=64", "model.attn_chunks=2",
         "train.batch_size=4"]


def test_train_step_products_cover_every_matmul():
    cfg = load_config("tiny", SMALL + ["model.scan_layers=false"])
    _, _, compiled = _jax_step(cfg)
    step_flops = _cost_flops(compiled)
    dots = gemm.dots_in_hlo(compiled.as_text())
    tokens = cfg.train.batch_size * cfg.model.context
    dot_flops = sum(d.flops * n for d, n in dots.items())
    # forward (2N) and backward (4N) of every matmul parameter, plus attention's products
    assert dot_flops >= 6 * matmul_params(cfg.model) * tokens * 0.97
    assert 0.8 < dot_flops / step_flops <= 1.0
    # q, k, v, out, fc, proj per layer: forward, dx, dw each, and the tied head's three
    two_d = sum(n for d, n in dots.items() if len(d.lhs) == 2)
    assert two_d == cfg.model.layers * 6 * 3 + 3


def test_scanned_layers_count_once_per_iteration():
    """The scanned step holds one layer's dots in a while body; counted by the loop's trip count,
    they are the unrolled step's products (XLA's cost analysis counts the body once)."""
    def products(scan: str):
        compiled = _jax_step(load_config("tiny", SMALL + [f"model.scan_layers={scan}"]))[2]
        return gemm.dots_in_hlo(compiled.as_text())

    unrolled, scanned = products("false"), products("true")
    flops = lambda dots: sum(d.flops * n for d, n in dots.items())
    two_d = lambda dots: sum(n for d, n in dots.items() if len(d.lhs) == 2)
    assert flops(scanned) == flops(unrolled) and two_d(scanned) == two_d(unrolled)


@pytest.mark.slow   # the bench CLI's JSON stays default through tests/test_cli.py::test_bench_json
def test_cli_quick_json(capsys, tmp_path):
    png = tmp_path / "gemm.png"
    args = ["bench", "gemm", "model.layers=1", "model.width=32", "model.heads=2", "model.context=32",
            "model.attn_chunks=2", "train.batch_size=2", "--json", "--quick", "--no-torch", "--out", str(png)]
    assert cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["rows"] and all(x["xla_s"] > 0 and x["count"] >= 1 for x in r["rows"])
    assert r["xla_total_s"] == pytest.approx(sum(x["xla_s"] * x["count"] for x in r["rows"]))
    assert r["torch_total_s"] is None and r["step_s"] > 0
    assert "products run alone" in gemm.report(r)
    assert png.read_bytes().startswith(b"\x89PNG") and r["plot"] == str(png)
