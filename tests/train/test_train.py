"""Training claims: the loss falls, a resumed run is the uninterrupted run, accumulation and
data parallelism change nothing but speed."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import load_config
from lineage_jax.runs import checkpoint as ckpt
from lineage_jax.train.loop import RunDirError, train
from lineage_jax.train.setup import build
from lineage_jax.train.step import make_train_step

SMALL = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
         "train.batch_size=8", "train.log_every=2", "train.eval_every=4", "train.eval_batches=2",
         "optim.warmup_steps=2", "optim.lr=3e-3"]


def small_cfg(tmp_path, *extra):
    return load_config("tiny", SMALL + [f"run_dir={tmp_path}"] + list(extra))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def restored_params(run_dir, cfg):
    setup = build(cfg, compile_steps=False)
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        state, meta = ckpt.restore(mngr, mngr.latest_step(), setup.abstract_state())
    return state, meta


def test_loss_falls_and_run_dir_is_complete(tmp_path):
    cfg = small_cfg(tmp_path, "train.steps=40", "train.ckpt_every=20")
    summary = train(cfg, progress=False)
    rows = read_metrics(tmp_path)
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 40
    assert {"step", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(rows[0])
    assert any("eval_loss" in r for r in rows)
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").is_file()
    assert ckpt.latest_step(tmp_path) == 40


def test_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    extra = ["train.steps=8", "train.ckpt_every=100", "model.dropout=0.1"]   # dropout: keys must resume too
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(small_cfg(straight, *extra), progress=False)
    train(small_cfg(resumed, *extra), progress=False, stop_at=4)           # "killed" after step 4
    assert ckpt.latest_step(resumed) == 4
    with pytest.raises(RunDirError, match="trained with data.loader=grain; resume with data.loader=grain") as e:
        train(small_cfg(resumed, *extra, "data.loader=numpy"), progress=False)   # another order: refused
    assert "\n" not in str(e.value) and ckpt.latest_step(resumed) == 4
    train(small_cfg(resumed, *extra), progress=False)                      # same command again: resumes
    cfg = small_cfg(straight, *extra)
    a, meta_a = restored_params(straight, cfg)
    b, meta_b = restored_params(resumed, cfg)
    chex.assert_trees_all_equal(a, b)                                      # bitwise
    assert meta_a["data_position"] == meta_b["data_position"] == 8 * cfg.train.batch_size
    assert meta_a["data_order"] == meta_b["data_order"] == "grain"
    la, lb = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_grad_accumulation_equals_the_full_batch(tmp_path):
    cfg = small_cfg(tmp_path)
    setup = build(cfg, compile_steps=False, devices=jax.devices()[:1])
    state = setup.init_state(jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (8, 33)), jnp.int32)
    outs = []
    for accum in (1, 2, 4):
        step = jax.jit(make_train_step(setup.model, setup.tx, seed=0, grad_accum=accum))
        outs.append(step(state, {"tokens": tokens}))
    for new_state, metrics in outs[1:]:
        chex.assert_trees_all_close(new_state.params, outs[0][0].params, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(metrics["loss"], outs[0][1]["loss"], rtol=1e-6)


def test_data_parallel_on_8_devices_equals_one_device(tmp_path):
    cfg = small_cfg(tmp_path)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        setup = build(cfg, devices=devices)
        state = setup.init_state(jax.random.key(0))
        tokens = np.random.default_rng(1).integers(0, 257, (8, 33))
        for _ in range(3):
            state, metrics = setup.train_step(state, setup.put_batch(tokens))
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5)
    # Adam's m/√v turns float-reordering noise in near-zero gradients into up to lr-sized moves;
    # 1e-4 is 3% of one step (lr 3e-3), far below what a wrong gradient would produce.
    chex.assert_trees_all_close(results[1][0], results[0][0], atol=1e-4)


def test_run_dir_of_another_model_is_refused(tmp_path):
    train(small_cfg(tmp_path, "train.steps=2"), progress=False)
    with pytest.raises(RunDirError, match="model.width"):
        train(small_cfg(tmp_path, "train.steps=4", "model.width=64"), progress=False)


@pytest.mark.slow
def test_killed_cli_run_resumes_step_by_step(tmp_path):
    """SIGKILL a real `lineage train` after its first checkpoint; rerun; metrics.jsonl matches an
    uninterrupted run row by row (losses bitwise)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = SMALL + ["train.steps=80", "train.ckpt_every=10", "train.log_every=5"]
    one_device = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(one_device), "JAX_PLATFORMS": "cpu"}   # opt level 0 kept

    def cli(run_dir, **kw):
        cmd = [sys.executable, "-m", "lineage_jax", "train", "--no-progress", "--no-sample", *args, f"run_dir={run_dir}"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli(straight).wait(timeout=300) == 0
    proc = cli(killed)
    deadline = time.time() + 300
    while ckpt.latest_step(killed) is None or ckpt.latest_step(killed) < 10:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.latest_step(killed) < 80, "the run finished before it could be killed"
    assert cli(killed).wait(timeout=300) == 0
    a, b = read_metrics(straight), read_metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [(r["loss"], r.get("eval_loss")) for r in a] == [(r["loss"], r.get("eval_loss")) for r in b]


def test_fp16_overflow_step_is_skipped_and_the_scale_halves(tmp_path):
    """Micikevicius et al. 2018 §3.2, through the real train step: with a loss scale so large
    that the scaled gradients overflow, the update is skipped (parameters bitwise unchanged),
    the scale halves and the skip is counted; once finite, training proceeds."""
    cfg = small_cfg(tmp_path, "parallel.precision=fp16", "parallel.loss_scale_init=1e38")
    setup = build(cfg, devices=jax.devices()[:1])
    state = setup.init_state(jax.random.key(0))
    before = jax.device_get(state.params)
    batch = setup.put_batch(np.random.default_rng(0).integers(0, 257, (8, 33)))
    state, m = setup.train_step(state, batch)
    assert int(m["skipped_steps"]) == 1 and float(m["loss_scale"]) == pytest.approx(5e37)
    chex.assert_trees_all_equal(jax.device_get(state.params), before)
    for _ in range(130):                      # 1e38 / 2^k reaches a finite-gradient scale
        state, m = setup.train_step(state, batch)
    assert float(m["loss_scale"]) < 1e6 and int(m["skipped_steps"]) < 131
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), jax.device_get(state.params), before)))
