"""Bad configs end in one line naming the key and what is allowed, before anything compiles."""
import pytest

from lineage_jax import cli
from lineage_jax.config import Config, ConfigError, load_config
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
    ("optim.warmup_steps=100000", r"optim.warmup_steps=100000: must be in \[0, train.steps"),
    ("mesh.data=0", r"mesh.data=0: mesh axis sizes must be positive"),
    ("train.steps", r"must look like section.key=value"),
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
