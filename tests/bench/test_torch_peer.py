"""The PyTorch speed peer of `lineage bench` builds the same model and optimizer, and trains."""
import dataclasses
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lineage_jax.bench import torch_peer as tp  # noqa: E402
from lineage_jax.config import ModelConfig, OptimConfig, load_config  # noqa: E402
from lineage_jax.models.gpt import GPT, count_params  # noqa: E402
from lineage_jax.optim import make_schedule  # noqa: E402
from lineage_jax.train.step import decay_mask  # noqa: E402

SMALL = ModelConfig(vocab_size=257, context=32, layers=2, width=64, heads=4, scan_layers=False)


def jax_param_shapes(cfg: ModelConfig):
    tokens = jnp.zeros((1, cfg.context), jnp.int32)
    variables = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), tokens))
    return nn_unbox(variables["params"])


@pytest.mark.parametrize("cfg", [load_config("bench").model, SMALL, dataclasses.replace(SMALL, mlp_ratio=2)],
                         ids=["bench", "small", "mlp_ratio2"])
def test_param_count_equals_jax_model(cfg):
    params = jax_param_shapes(cfg)
    n_jax = count_params(params)
    assert tp.param_count(cfg) == n_jax
    model = tp.TorchGPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == n_jax
    # Weight decay on the same parameters as the JAX mask (matmul kernels only).
    mask = decay_mask(params)
    decayed_jax = sum(math.prod(p.shape) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    decay_group, rest = model.param_groups(0.1)
    assert sum(p.numel() for p in decay_group["params"]) == decayed_jax
    assert all(p.ndim == 2 for p in decay_group["params"]) and rest["weight_decay"] == 0.0


def test_lr_schedule_matches_jax():
    for optim, total in [(OptimConfig(lr=3e-4, warmup_steps=10, min_lr_ratio=0.1), 50),
                         (OptimConfig(warmup_steps=0), 20), (OptimConfig(warmup_steps=20), 20)]:
        sched, mult = make_schedule(optim, total), tp.lr_multiplier(optim, total)
        got = [optim.lr * mult(s) for s in range(total + 5)]
        want = [float(sched(s)) for s in range(total + 5)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_step_trains_and_returns_float():
    optim = OptimConfig(lr=3e-3, warmup_steps=5)
    step = tp.make_torch_step(SMALL, optim, batch_size=4, seed=0, total_steps=100)
    assert step.threads == torch.get_num_threads() and step.param_count == tp.param_count(SMALL)
    losses = [step() for _ in range(30)]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(SMALL.vocab_size)) < 0.5       # starts near uniform
    assert losses[-1] < losses[0] - 1.0, losses                      # a repeated batch is learned


def test_bench_step_returns_finite_float():
    cfg = load_config("bench")
    step = tp.make_torch_step(cfg.model, cfg.optim, batch_size=2, adamw="foreach")
    loss = step()
    assert isinstance(loss, float) and math.isfinite(loss)
    assert step.tokens_per_step == 2 * cfg.model.context


def test_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from lineage_jax.bench import torch_peer as tp\n"
            "assert not tp.torch_available()\n"
            "from lineage_jax.config import ModelConfig, OptimConfig\n"
            "assert tp.param_count(ModelConfig()) > 0\n"
            "try:\n    tp.make_torch_step(ModelConfig(), OptimConfig(), 1)\n"
            "except ImportError as e:\n    print('raised', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "raised" in out.stdout


def test_same_function_as_jax_model():
    """With the JAX parameters copied in, the peer computes the JAX model's logits (same architecture)."""
    cfg = SMALL
    D = cfg.width
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, cfg.context))
    params = GPT(cfg).init(jax.random.key(1), jnp.asarray(tokens))["params"]
    params = jax.tree.map(np.asarray, nn_unbox(params))
    want = np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(tokens)))

    model = tp.TorchGPT(cfg)
    t = lambda a: torch.tensor(np.asarray(a, np.float32))
    with torch.no_grad():
        model.wte.weight.copy_(t(params["wte"]))
        model.wpe.weight.copy_(t(params["wpe"]))
        model.ln_f.weight.copy_(t(params["ln_f"]["scale"]))
        model.ln_f.bias.copy_(t(params["ln_f"]["bias"]))
        for i, blk in enumerate(model.blocks):
            p = params[f"blocks_{i}"]
            a, m = p["attn"], p["mlp"]
            blk.qkv.weight.copy_(t(np.concatenate([a[n]["kernel"].reshape(D, D) for n in ("query", "key", "value")], 1).T))
            blk.qkv.bias.copy_(t(np.concatenate([a[n]["bias"].reshape(D) for n in ("query", "key", "value")])))
            blk.out.weight.copy_(t(a["out"]["kernel"].reshape(D, D).T))
            blk.out.bias.copy_(t(a["out"]["bias"]))
            blk.fc.weight.copy_(t(m["fc"]["kernel"].T))
            blk.fc.bias.copy_(t(m["fc"]["bias"]))
            blk.proj.weight.copy_(t(m["proj"]["kernel"].T))
            blk.proj.bias.copy_(t(m["proj"]["bias"]))
            for ln in ("ln1", "ln2"):
                getattr(blk, ln).weight.copy_(t(p[ln]["scale"]))
                getattr(blk, ln).bias.copy_(t(p[ln]["bias"]))
        got = model.eval()(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def nn_unbox(tree):
    return jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, tree, is_leaf=lambda x: hasattr(x, "unbox"))
