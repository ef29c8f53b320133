"""Adapters on disk: a standalone safetensors file round-trips bit for bit with its LoRA config; the
run directory's record reads back and a damaged one is one line."""
import numpy as np
import pytest

from lineage_jax.adapt import lora, store


def test_adapter_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    ad = {"blocks": {"attn": {"query": {"lora_a": rng.normal(size=(2, 8, 3)).astype(np.float32),
                                        "lora_b": rng.normal(size=(2, 3, 2, 4)).astype(np.float32)}}}}
    cfg = lora.LoraConfig(rank=3, alpha=6.5, targets=("q", "mlp"))
    store.save_file(tmp_path / "a.safetensors", ad, cfg)
    back, cfg2 = store.load_file(tmp_path / "a.safetensors")
    assert cfg2 == cfg
    np.testing.assert_array_equal(back["blocks"]["attn"]["query"]["lora_b"], ad["blocks"]["attn"]["query"]["lora_b"])
    np.testing.assert_array_equal(back["blocks"]["attn"]["query"]["lora_a"], ad["blocks"]["attn"]["query"]["lora_a"])


def test_record_round_trips_and_a_damaged_one_is_one_line(tmp_path):
    rec = store.Record(lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), "base", "nf4", "/x/hf")
    store.write(tmp_path, rec)
    assert store.is_adapted(tmp_path) and store.read(tmp_path) == rec
    assert rec.base_dir(tmp_path) == (tmp_path / "base").resolve()
    (tmp_path / store.ADAPTER_JSON).write_text("{not json")
    with pytest.raises(store.AdapterError, match="not a readable adapter record"):
        store.read(tmp_path)
