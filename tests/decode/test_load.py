"""``load_for_inference`` restores only the parameters: the same arrays a full TrainState restore gives,
with no optimizer or train setup built; a missing run dir, config or checkpoint is named in one line."""
import jax
import numpy as np
import optax
import pytest

from lineage_jax import cli, optim
from lineage_jax.config import load_config
from lineage_jax.decode import load_for_inference
from lineage_jax.runs import checkpoint as ckpt
from lineage_jax.train import setup as train_setup

TINY = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=16", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=2", "train.log_every=2", "train.eval_every=0", "optim.warmup_steps=1",
        "mesh.fsdp=4", "parallel.zero_stage=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("load") / "run"
    assert cli.main(["train", "--no-progress", "--no-sample", *TINY, f"run_dir={run}"]) == 0
    return run


def test_params_equal_a_full_restore_and_no_optimizer_is_built(run_dir, monkeypatch):
    """The run was trained with ZeRO-3 over 8 devices; the full restore reads it back there, ours onto one."""
    setup = train_setup.build(load_config(str(run_dir / "config.yaml"), []), compile_steps=False)
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        state, _ = ckpt.restore(mngr, mngr.latest_step(), setup.abstract_state())
    assert int(state.step) == 2 and len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8

    def refuse(*a, **k):
        raise AssertionError("load_for_inference built an optimizer or a train setup")
    for owner, name in ((optim, "make_optimizer"), (train_setup, "make_optimizer"), (train_setup, "build"),
                        (optax, "adamw"), (optax, "chain")):
        monkeypatch.setattr(owner, name, refuse)
    cfg, model, params, tokenizer = load_for_inference(run_dir)
    assert jax.tree.structure(params) == jax.tree.structure(state.params)
    for ours, full in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        assert ours.dtype == full.dtype and len(ours.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(full))
    assert cfg.model.layers == 2 and tokenizer.vocab_size <= cfg.model.vocab_size
    logits = model.apply({"params": params}, np.zeros((1, cfg.model.context), np.int32))
    assert logits.shape == (1, cfg.model.context, cfg.model.vocab_size)


def test_missing_pieces_are_named(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    cases = [(tmp_path / "missing", "no such directory"), (empty, "no config.yaml there (not a run directory)"),
             (no_ckpt, "no checkpoint in")]
    for path, message in cases:
        with pytest.raises(ckpt.CheckpointError) as e:
            load_for_inference(path)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
        for other in {m for _, m in cases} - {message}:
            assert other not in str(e.value)
