"""Bad configs end in one line naming the key and what is allowed, before anything compiles."""
import dataclasses
import json
import re

import pytest
import yaml

from lineage_jax import cli
from lineage_jax.config import (BertConfig, Config, ConfigError, DataConfig, MeshConfig, ModelConfig, OptimConfig,
                                ParallelConfig, T5Config, TrainConfig, TransformerConfig, cross_section, load_config,
                                validate)
from parallel import MeshError, make_mesh, resolve_mesh_shape


def test_presets_and_overrides():
    cfg = load_config("tiny", ["train.steps=70", "optim.lr=1e-4", "run_dir=runs/x", "data.text_files=[a.txt, b.txt]"])
    assert isinstance(cfg, Config)
    assert (cfg.train.steps, cfg.optim.lr, cfg.run_dir) == (70, 1e-4, "runs/x")
    assert cfg.data.text_files == ("a.txt", "b.txt")
    assert load_config("gpt2_small").model.vocab_size == 50257
    assert load_config(None).model == Config().model


@pytest.mark.parametrize("override,match", [
    ("model.widht=64", r"unknown key 'model.widht'.*did you mean 'model.width'"),
    ("modle.width=64", r"unknown key 'modle'"),
    ("train.steps=ten", r"train.steps='ten': expected an integer"),
    ("model.scan_layers=maybe", r"expected true or false"),
    ("model.heads=5", r"model.heads=5 does not divide model.width=256; allowed heads: 1, 2, 4, 8"),
    ("model.dtype=float8", r"model.dtype='float8': allowed float32, bfloat16, float16"),
    ("train.grad_accum=3", r"train.grad_accum=3 does not divide train.batch_size=16"),
    ("model.attn_chunks=3", r"model.attn_chunks=3 does not divide model.context=128"),
    ("optim.warmup_steps=-1", r"optim.warmup_steps=-1: must be >= 0"),
    ("mesh.data=0", r"mesh.data=0: mesh axis sizes must be positive"),
    ("train.steps", r"must look like section.key=value"),
    ("run_dir=gs://bucket/run", r"run_dir=gs://bucket/run: a run directory is a path on a filesystem every process"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [override])


def test_missing_preset_lists_presets():
    with pytest.raises(ConfigError, match="not found.*tiny"):
        load_config("nope")


def test_cli_reports_one_line_and_exit_2_before_compiling(capsys, monkeypatch):
    import lineage_jax.train.setup as setup
    monkeypatch.setattr(setup, "build", lambda *a, **k: pytest.fail("compiled despite a bad config"))
    assert cli.main(["train", "model.heads=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.heads=3 does not divide")


def test_mesh_errors():
    with pytest.raises(MeshError, match="needs 6 devices but 8 are available"):
        resolve_mesh_shape({"data": 3, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(MeshError, match="does not divide the 8 available"):
        resolve_mesh_shape({"data": -1, "fsdp": 3}, 8)
    assert resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "expert": 1, "tensor": 2}
    assert make_mesh({"data": -1}).shape == {"data": 8, "fsdp": 1, "expert": 1, "tensor": 1}


def test_batch_and_dimension_divisibility_fail_before_compiling(tmp_path):
    from lineage_jax.train.setup import build
    with pytest.raises(MeshError, match=r"\(12/1\)=12 does not split over the 8 data-parallel devices"):
        build(load_config("tiny", ["train.batch_size=12"]), compile_steps=False)
    with pytest.raises(MeshError, match=r"logical axis 'vocab' has size 257.*do not divide"):
        build(load_config("tiny", ["mesh.tensor=2", "mesh.data=-1"]), compile_steps=False)


# ----------------------------------------------------------------------------- each section checks itself

@pytest.mark.parametrize("section,bad,match", [
    (ModelConfig(heads=5), "model", r"model.heads=5 does not divide model.width=256"),
    (ModelConfig(moe_every=1, moe_router="nope"), "model", r"model.moe_router='nope': allowed shazeer"),
    (DataConfig(eval_fraction=1.0), "data", r"data.eval_fraction=1.0: must be in \(0, 1\)"),
    (DataConfig(prepared_dir="/nonexistent/x"), "data", r"data.prepared_dir=/nonexistent/x: no prepared dataset"),
    (OptimConfig(b2=1.0), "optim", r"optim.b1=0.9, optim.b2=1.0: each must be in \[0, 1\)"),
    (TrainConfig(batch_size=16, grad_accum=3), "train", r"train.grad_accum=3 does not divide train.batch_size=16"),
    (MeshConfig(data=-1, tensor=-1), "mesh", r"mesh: at most one axis may be -1"),
    (ParallelConfig(zero_stage=4), "parallel", r"parallel.zero_stage=4: allowed 0 \(none\)"),
])
def test_each_section_validates_itself(section, bad, match):
    with pytest.raises(ConfigError, match=match):
        section.validate()
    cfg = dataclasses.replace(Config(), **{bad: section})
    for name in Config.SECTIONS:             # the other sections are fine; validate names this one
        if name != bad:
            getattr(cfg, name).validate()
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def _prepared(tmp_path, **meta):
    d = tmp_path / "prepared_tokens" / "1.0.0"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text(json.dumps(meta))
    return str(tmp_path)


@pytest.mark.parametrize("overrides,match", [
    (["mesh.expert=2"], r"mesh.expert=2: expert parallelism needs MoE layers"),
    (["mesh.expert=2", "model.moe_every=1", "model.moe_backend=dropless"], r"needs model.moe_backend=capacity"),
    (["mesh.expert=3", "model.moe_every=1"], r"mesh.expert=3 does not divide model.experts=8"),
    (["model.moe_every=1", "parallel.sequence_parallel=true"], r"sequence_parallel=true with MoE layers"),
    (["parallel.form=shard_map", "model.dropout=0.1"], r"parallel.form=shard_map does not support model.dropout"),
    (["data.prepared_dir={seq_512}"], r"packed at --seq-len 512: set model.context=512"),
    (["data.prepared_dir={vocab_300}"], r"tokenized with a vocabulary of 300: set model.vocab_size >= 300"),
])
def test_cross_section_checks_live_in_one_function(tmp_path, overrides, match):
    dirs = {"seq_512": _prepared(tmp_path / "a", seq_len=512, vocab_size=257),
            "vocab_300": _prepared(tmp_path / "b", seq_len=128, vocab_size=300)}
    tree = {}
    for item in overrides:
        key, value = item.format(**dirs).split("=")
        section, field = key.split(".")
        tree.setdefault(section, {})[field] = yaml.safe_load(value)
    base = load_config("tiny")
    cfg = dataclasses.replace(base, **{s: dataclasses.replace(getattr(base, s), **kw) for s, kw in tree.items()})
    cfg.validate()                           # every section is fine by itself
    with pytest.raises(ConfigError, match=match):
        cross_section(cfg)
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [o.format(**dirs) for o in overrides])


def test_encoder_configs_validate_themselves():
    for make, match in ((lambda: BertConfig(hidden_act="swish"), r"BertConfig.hidden_act='swish': allowed gelu"),
                        (lambda: T5Config(feed_forward_proj="gelu"), r"T5Config.feed_forward_proj='gelu'"),
                        (lambda: TransformerConfig(d_model=30, heads=4), r"must be even and divisible by heads=4")):
        with pytest.raises(ConfigError, match=match):
            make()


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.lr=.nan", "optim.clip_norm=.nan", "optim.eps=.nan",
                                      "optim.weight_decay=.inf", "model.init_std=.inf", "model.rope_theta=.inf",
                                      "parallel.loss_scale_init=.inf"])
def test_non_finite_numbers_are_refused_by_name(override):
    """``x <= 0`` is False for NaN: every float is checked for finiteness before any rule (issue 15, cause 2)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=(inf|nan): must be a finite number$"):
        load_config("tiny", [override])
