"""``lineage align grpo``: bad input is one line before anything compiles; a run rolls out groups with the KV
cache, rewards them with the verifier, writes a run directory a rerun resumes (same data, same keys), and its
GRPO step under ZeRO-3 on 8 devices equals the step on one device."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.align import grpo_stage, setup as align_setup
from lineage_jax.config import load_config
from lineage_jax.reasoning import arith
from tests.commands.test_align import PRE, pretrained_run


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return pretrained_run(tmp_path_factory.mktemp("grpo") / "pre")


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line_before_compiling(pre, tmp_path, capsys):
    base = ["align", "grpo", "--from", str(pre), "--run-dir", str(tmp_path / "g"), "--no-progress"]
    assert "grpo.groups: unknown" in _error(capsys, [*base, "grpo.groups=4"])
    assert "grpo.group=1" in _error(capsys, [*base, "grpo.group=1"])
    assert "grpo.loss_type=ppo" in _error(capsys, [*base, "grpo.loss_type=ppo"])
    assert "grpo.baseline=median: one of reward, length" in _error(capsys, [*base, "grpo.baseline=median"])
    assert "grpo.digits=x: expected a int" in _error(capsys, [*base, "grpo.digits=x"])
    assert "train.batch_size=6" in _error(capsys, [*base, "train.batch_size=6"])
    assert "model.context=32" in _error(capsys, [*base, "grpo.new_tokens=40"])
    assert "not a run directory" in _error(capsys, ["align", "grpo", "--from", str(tmp_path), "--run-dir",
                                                    str(tmp_path / "g")])
    assert not (tmp_path / "g").exists()


def test_training_problems_are_a_function_of_the_iteration_and_never_held_out():
    g = grpo_stage.GrpoConfig(digits=2, eval_prompts=16)
    held = {p.prompt for p in grpo_stage.held_out(g, seed=0)}
    a = grpo_stage.train_problems(g, 32, 0, 5, held)
    assert a == grpo_stage.train_problems(g, 32, 0, 5, held) != grpo_stage.train_problems(g, 32, 0, 6, held)
    assert not held & {p.prompt for p in a} and all(len(p.prompt) <= g.prompt_width for p in a)


@pytest.mark.slow    # rollouts, the step and two evaluations compiled: ~25 s of CPU; the step's default proof is below
def test_a_run_rewards_groups_and_resumes(pre, tmp_path, capsys):
    args = ["align", "grpo", "--from", str(pre), "--run-dir", str(tmp_path / "g"), "--no-progress", "--json",
            "train.steps=1", "train.log_every=1", "grpo.eval_prompts=4", "grpo.new_tokens=8"]
    assert cli.main(args) == 0
    assert cli.main([*args[:-3], "train.steps=2", *args[-2:]]) == 0           # resumes at 1, runs iteration 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kind"] == "grpo" and summary["steps"] == 2 and 0 <= summary["final"]["accuracy"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["reward"] <= 1.1 and r["kl"] >= 0 for r in rows)
    record = json.loads((tmp_path / "g" / "run.json").read_text())
    assert record["align"]["kind"] == "grpo" and record["align"]["config"]["group"] == 4


def _steps(pre, mesh: list[str], devices, batch, n=3):
    cfg = load_config(str(pre / "config.yaml"), ["optim.warmup_steps=1", "optim.lr=1e-2", *mesh])
    s = align_setup.build(cfg, with_head=False, devices=devices)
    params = jax.device_get(grpo_stage.load_params(pre)[1])
    g = grpo_stage.GrpoConfig(beta=0.04)
    step = s.jit_step(grpo_stage.make_grpo_step(s.model, s.tx, g))
    state = s.init_state(params)
    for _ in range(n):
        state, m = step(state, s.put_batch(batch))
    return jax.device_get(state.params), float(m["loss"])


def test_the_step_under_zero3_on_8_devices_equals_one_device(pre):
    rng = np.random.default_rng(0)
    B, T = 8, 16
    tokens = rng.integers(1, 200, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    mask[:, 6:6 + 8] = 1.0
    batch = {"tokens": tokens, "mask": mask, "old_logp": rng.normal(-3, 0.1, (B, T - 1)).astype(np.float32),
             "ref_logp": rng.normal(-3, 0.1, (B, T - 1)).astype(np.float32),
             "advantages": rng.normal(size=B).astype(np.float32)}
    one, loss1 = _steps(pre, ["mesh.data=1"], jax.devices()[:1], batch)
    eight, loss8 = _steps(pre, ["mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3"], jax.devices(), batch)
    assert len(jax.devices()) == 8 and abs(loss1 - loss8) < 1e-5
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
