"""``lineage align``: bad input is one line before anything compiles; the stages chain from a pretrained run
(sft -> rm -> ppo, and dpo) into run directories a rerun resumes, sharded by the same overrides as training."""
import json
import shutil

import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.align import dataset, run as align_run

PRE = ["model.layers=1", "model.width=16", "model.heads=2", "model.context=32", "model.attn_chunks=1",
       "train.batch_size=8", "train.steps=1", "train.eval_every=0", "optim.warmup_steps=1"]


def pretrained_run(run, overrides=PRE):
    """A run directory as ``lineage train`` leaves it (config.yaml, run.json, a checkpoint of fresh params),
    written without compiling a train step."""
    import flax.linen as nn
    import jax.numpy as jnp
    import yaml

    from lineage_jax import models
    from lineage_jax.config import load_config
    from lineage_jax.runs import checkpoint as ckpt
    from lineage_jax.tokenize import get_tokenizer
    cfg = load_config("tiny", [*overrides, f"run_dir={run}"])
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tok = get_tokenizer(cfg.data.tokenizer)
    (run / "run.json").write_text(json.dumps({"tokenizer": {"spec": "byte", "sha256": tok.fingerprint(),
                                                             "vocab_size": tok.vocab_size}}))
    params = nn.unbox(jax.jit(models.build(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"])
    with ckpt.manager(run, async_save=False) as mngr:
        ckpt.save(mngr, 1, {"params": params}, {"step": 1})
    return run


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return pretrained_run(tmp_path_factory.mktemp("align") / "pre")


@pytest.fixture()
def small_data(monkeypatch, tmp_path_factory):
    monkeypatch.setitem(dataset.SPLITS, "train", (0, 64))
    monkeypatch.setitem(dataset.SPLITS, "test", (1, 16))
    return f"align.data_dir={tmp_path_factory.mktemp('tfds')}"


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _as_stage(src, dst, kind, sha=None):
    """A copy of a run recorded as an align stage (and, with ``sha``, another tokenizer)."""
    shutil.copytree(src, dst)
    rec = json.loads((dst / "run.json").read_text())
    rec["align"] = {"kind": kind}
    if sha:
        rec["tokenizer"]["sha256"] = sha
    (dst / "run.json").write_text(json.dumps(rec))
    return dst


def test_bad_input_is_one_line_before_compiling(pre, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(align_run.align_setup, "build", lambda *a, **k: pytest.fail("compiled before refusing"))
    out = str(tmp_path / "out")
    assert "align.beta=0.0: must be > 0" in _error(capsys, ["align", "dpo", "--from", str(pre), "--run-dir", out,
                                                            "align.beta=0"])
    assert "align.beta=-1.0" in _error(capsys, ["align", "dpo", "--from", str(pre), "--run-dir", out, "align.beta=-1"])
    assert "align.kl_coeff: unknown" in _error(capsys, ["align", "ppo", "--policy", str(pre), "--reward", str(pre),
                                                        "--run-dir", out, "align.kl_coeff=0.1"])
    assert "not a run directory" in _error(capsys, ["align", "sft", "--from", str(tmp_path), "--run-dir", out])
    # PPO's reward must be a reward model, and the policy a language model (the reference it is leashed to)
    assert "takes a run of: rm" in _error(capsys, ["align", "ppo", "--policy", str(pre), "--reward", str(pre),
                                                   "--run-dir", out])
    rm = _as_stage(pre, tmp_path / "rm", "rm")
    assert "is a 'rm' run; --policy takes" in _error(capsys, ["align", "ppo", "--policy", str(rm), "--reward", str(rm),
                                                              "--run-dir", out])
    other = _as_stage(pre, tmp_path / "rm_other", "rm", sha="0" * 64)
    assert "another tokenizer" in _error(capsys, ["align", "ppo", "--policy", str(pre), "--reward", str(other),
                                                  "--run-dir", out])
    assert "align.seq_len=64: must be in [16, model.context=32]" in _error(
        capsys, ["align", "sft", "--from", str(pre), "--run-dir", out, "align.seq_len=64"])
    assert not (tmp_path / "out").exists()


def _params(run):
    return jax.tree.leaves(align_run.load_params(run)[1])


@pytest.mark.slow
def test_stages_chain_resume_and_shard(pre, tmp_path, capsys, small_data):
    common = ["--no-progress", "--json", small_data, "align.eval_prompts=4", "train.log_every=1"]
    sft = tmp_path / "sft"
    args = ["align", "sft", "--from", str(pre), "--run-dir", str(sft), "train.steps=3", "train.ckpt_every=2", *common]
    assert cli.main(args) == 0
    straight = _params(sft)
    shutil.rmtree(sft / "checkpoints" / "3")              # killed after step 2's checkpoint
    assert cli.main(args) == 0                            # the rerun resumes from step 2
    for a, b in zip(_params(sft), straight):              # resumed == uninterrupted
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert [json.loads(x)["step"] for x in (sft / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    capsys.readouterr()
    rm = tmp_path / "rm"
    assert cli.main(["align", "rm", "--from", str(sft), "--run-dir", str(rm), "train.steps=2", *common]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["final"]["accuracy"] <= 1
    assert cli.main(["align", "ppo", "--policy", str(sft), "--reward", str(rm), "--run-dir", str(tmp_path / "ppo"),
                     "train.steps=1", "align.ppo_epochs=1", "align.ptx_coef=0.1", *common]) == 0
    row = json.loads((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"score", "kl", "policy_loss", "value_loss", "ptx_loss", "clipfrac"} <= set(row)
    # the command takes pretraining's mesh overrides: DPO data-parallel over 8 devices equals DPO under ZeRO-3
    # (one device against 8: tests/align/test_steps.py)
    dpo = ["align", "dpo", "--from", str(sft), "train.steps=2", *common]
    assert cli.main([*dpo, "--run-dir", str(tmp_path / "d1")]) == 0
    assert cli.main([*dpo, "--run-dir", str(tmp_path / "d8"), "mesh.data=1", "mesh.fsdp=8",
                     "parallel.zero_stage=3"]) == 0
    for a, b in zip(_params(tmp_path / "d1"), _params(tmp_path / "d8")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert cli.main(["align", "dpo", "--from", str(sft), "--run-dir", str(tmp_path / "d8"), "mesh.fsdp=8",
                     "mesh.data=1", "parallel.zero_stage=3", "train.steps=2", *common[:-1]]) == 0   # done: resumes at 2
    assert '"steps": 2' in capsys.readouterr().out
