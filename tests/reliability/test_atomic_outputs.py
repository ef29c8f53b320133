"""Outputs that other work depends on are replaced all or nothing (issue 15, root cause 5): a fault
in the middle of writing a tokenizer, a Hugging Face export or ``data prepare --overwrite`` leaves
the previous file or dataset whole and loadable, and no temporary file behind."""
import os
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from lineage_jax.config import ConfigError, ModelConfig
from lineage_jax.data.pipeline import prepare as prep
from lineage_jax.data.prepared import PreparedTokens, read_prepared
from lineage_jax.tokenize import load as load_tokenizer
from lineage_jax.tokenize.bpe_train import train_bpe

EN = Path(__file__).resolve().parents[2] / "scripts" / "langid_text" / "en.txt"


class Fault(RuntimeError):
    """The injected failure (a kill, a full disk) in the middle of a write."""


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_prepare_overwrite_failing_midway_keeps_the_old_dataset(tmp_path, monkeypatch):
    en = [s for s in EN.read_text(encoding="utf-8").splitlines() if s.strip()]
    (tmp_path / "v1").mkdir()
    for k in range(5):
        (tmp_path / "v1" / f"en{k}.txt").write_text(" ".join(en[6 * k:6 * k + 6]), encoding="utf-8")
    out = tmp_path / "out"
    cfg = prep.PrepareConfig(seq_len=32, eval_fraction=0.3)
    prep.prepare([str(tmp_path / "v1")], str(out), cfg)
    old_splits, old_meta = read_prepared(out)
    before = _files(out)

    real = PreparedTokens._generate_examples

    def dies_midway(self, arrays):
        for n, example in enumerate(real(self, arrays)):
            if n == 3:
                raise Fault("killed while writing the new dataset")
            yield example

    monkeypatch.setattr(PreparedTokens, "_generate_examples", dies_midway)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "new.txt").write_text(" ".join(en[40:60]), encoding="utf-8")
    with pytest.raises(Fault):
        prep.prepare([str(tmp_path / "v2")], str(out), prep.PrepareConfig(seq_len=32, overwrite=True))
    assert _files(out) == before                      # every old file as it was, nothing left over
    splits, meta = read_prepared(out)
    assert meta == old_meta
    for split in old_splits:
        np.testing.assert_array_equal(splits[split]["tokens"], old_splits[split]["tokens"])

    monkeypatch.setattr(PreparedTokens, "_generate_examples", real)   # the same command, no fault: swapped in
    report = prep.prepare([str(tmp_path / "v2")], str(out), prep.PrepareConfig(seq_len=32, overwrite=True))
    assert report["input_docs"] == 1 and read_prepared(out)[0]["train"]["tokens"].shape[0] >= 1
    assert not list(out.glob(".prepare-*"))


def test_tokenizer_save_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    old = train_bpe(["the cat sat on the mat " * 20], 262)
    path = old.save(str(tmp_path / "tok"))
    before = Path(path).read_bytes()
    new = train_bpe(["a different corpus entirely, with other merges " * 20], 270)

    def full_disk(fd):
        raise Fault("no space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(Fault):
        new.save(str(tmp_path / "tok"))
    assert Path(path).read_bytes() == before and os.listdir(tmp_path / "tok") == ["tokenizer.json"]
    assert load_tokenizer(str(tmp_path / "tok")).merges == old.merges


def test_hf_save_failing_midway_keeps_the_old_export(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    import safetensors.numpy

    from lineage_jax.interop import hf
    from lineage_jax.models.gpt import GPT
    mc = ModelConfig(vocab_size=50, context=8, layers=1, width=16, heads=2, attn_chunks=1)
    model = GPT(mc)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32)))["params"]
    hf.save(model, params, tmp_path / "hf")
    before = _files(tmp_path / "hf")
    real = safetensors.numpy.save_file

    def dies_midway(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:200])   # half a file, then the kill
        raise Fault("killed while writing model.safetensors")

    monkeypatch.setattr(safetensors.numpy, "save_file", dies_midway)
    params2 = jax.tree.map(lambda a: a + 1, params)
    with pytest.raises(Fault):
        hf.save(model, params2, tmp_path / "hf")
    assert _files(tmp_path / "hf") == before
    monkeypatch.setattr(safetensors.numpy, "save_file", real)
    _, loaded = hf.load(tmp_path / "hf")
    np.testing.assert_allclose(np.asarray(loaded["wpe"]), np.asarray(params["wpe"]))


def test_prepare_killed_between_the_renames_gets_the_old_dataset_back(tmp_path):
    """A kill after the old dataset was renamed away but before the new one came in: the next
    prepare into that directory puts the old one back before it builds (``staging``)."""
    en = [s for s in EN.read_text(encoding="utf-8").splitlines() if s.strip()]
    (tmp_path / "docs").mkdir()
    for k in range(3):
        (tmp_path / "docs" / f"en{k}.txt").write_text(" ".join(en[6 * k:6 * k + 6]), encoding="utf-8")
    out = tmp_path / "out"
    prep.prepare([str(tmp_path / "docs")], str(out), prep.PrepareConfig(seq_len=32, eval_fraction=0.3))
    old_splits, _ = read_prepared(out)
    (out / ".prepare-old-x").mkdir()
    os.replace(out / "prepared_tokens", out / ".prepare-old-x" / "prepared_tokens")   # where the kill left it
    (out / ".prepare-new-y" / "prepared_tokens").mkdir(parents=True)                  # a half-built new one
    with pytest.raises(Fault):
        with prep.staging(out):
            raise Fault("this build fails too")
    np.testing.assert_array_equal(read_prepared(out)[0]["train"]["tokens"], old_splits["train"]["tokens"])
    assert not list(out.glob(".prepare-*"))


def test_a_rerun_without_overwrite_after_a_killed_overwrite_keeps_the_old_dataset(tmp_path):
    """The old dataset is put back before the --overwrite check, so a plain rerun is refused (one line)
    instead of finding no dataset and building over the old one; a build of a live prepare is left alone."""
    en = [s for s in EN.read_text(encoding="utf-8").splitlines() if s.strip()]
    (tmp_path / "docs").mkdir()
    for k in range(3):
        (tmp_path / "docs" / f"en{k}.txt").write_text(" ".join(en[6 * k:6 * k + 6]), encoding="utf-8")
    out = tmp_path / "out"
    cfg = prep.PrepareConfig(seq_len=32, eval_fraction=0.3)
    prep.prepare([str(tmp_path / "docs")], str(out), cfg)
    old_splits, _ = read_prepared(out)
    (out / ".prepare-old-x").mkdir()
    os.replace(out / "prepared_tokens", out / ".prepare-old-x" / "prepared_tokens")   # where the kill left it
    live = out / f".prepare-new-{os.getpid()}-abc"                                     # another prepare, running
    live.mkdir()
    with pytest.raises(ConfigError, match="already holds a prepared dataset"):
        prep.prepare([str(tmp_path / "docs")], str(out), cfg)
    np.testing.assert_array_equal(read_prepared(out)[0]["train"]["tokens"], old_splits["train"]["tokens"])
    assert live.is_dir() and not (out / ".prepare-old-x").exists()
