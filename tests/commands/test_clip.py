"""``lineage clip train|zeroshot|score`` on the tiny captioned shapes: train writes a resumable run
directory, score prints a cosine per text for a PNG, zeroshot reports accuracy against chance; every
bad argument is one line (exit 2) before JAX compiles anything."""
import json

import numpy as np
import pytest

from lineage_jax import cli

TINY = ["--dataset", "tiny", "--batch-size", "16", "--warmup", "0", "--no-progress", "--json",
        "text_layers=1", "text_width=32", "text_heads=2", "embed_dim=16", "image.depth=1", "image.width=32",
        "image.heads=2", "image.mlp_dim=64", "image.patch_size=16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip") / "run"
    assert cli.main(["clip", "train", "--run-dir", str(d), "--steps", "2", "--save-every", "2", *TINY]) == 0
    return d


def test_train_writes_a_run_and_score_reads_it(run_dir, capsys, tmp_path):
    from lineage_jax.data.shapes import render
    from lineage_jax.vision.grid import save_png
    assert {"clip.json", "vocab.json", "metrics.jsonl", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    capsys.readouterr()
    png = save_png(tmp_path / "x.png", render("red", "circle", "large", 16, 16))
    assert cli.main(["clip", "score", "--run-dir", str(run_dir), "--image", str(png), "--text", "a large red circle",
                     "--text", "a photo of a dog", "--threshold", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 2 and [r["text"] for r in out["scores"]] == ["a large red circle", "a photo of a dog"]
    assert all(-1 <= r["score"] <= 1 and r["keep"] == (r["score"] >= 0) for r in out["scores"])
    assert out["scores"][1]["unknown_words"] == ["photo", "of", "dog"]


@pytest.mark.slow
def test_train_resumes_and_zeroshot_reports(run_dir, capsys):
    capsys.readouterr()
    assert cli.main(["clip", "train", "--run-dir", str(run_dir), "--steps", "3", "--save-every", "1", *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resumed_from"] == 2 and out["steps"] == 3
    assert cli.main(["clip", "zeroshot", "--run-dir", str(run_dir), "--json"]) == 0
    z = json.loads(capsys.readouterr().out)
    assert z["step"] == 3 and z["classes"] == 12 and 0 <= z["accuracy"] <= 1 and z["chance_among_heldout"] == 0.25
    # another model into the same directory is refused in one line
    assert cli.main(["clip", "train", "--run-dir", str(run_dir), "--steps", "3", *TINY, "embed_dim=8"]) == 2
    assert "another CLIP model (differs in embed_dim)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["train", "--run-dir", "R", "--steps", "0"], "--steps=0: must be at least 1"),
    (["train", "--run-dir", "R", "--dataset", "huge"], "dataset='huge': allowed default, tiny"),
    (["train", "--run-dir", "R", "text_layers"], "model settings are key=value"),
    (["zeroshot", "--run-dir", "R", "--split", "train"], "--split=train: allowed heldout, test"),
    (["zeroshot", "--run-dir", "R", "--template", "a photo"], "must hold exactly one {}"),
    (["zeroshot", "--run-dir", "/nonexistent/run"], "not a CLIP run (no clip.json)"),
    (["score", "--run-dir", "R", "--image", "/nonexistent.png", "--text", "x"], "no such file"),
])
def test_bad_arguments_are_one_line(capsys, argv, words):
    assert cli.main(["clip", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err


def test_foreign_run_dir_and_bad_model_setting_are_one_line(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["clip", "train", "--run-dir", str(tmp_path), "--dataset", "tiny"]) == 2
    assert "holds files that are not a CLIP run's (notes.txt)" in capsys.readouterr().err
    assert cli.main(["clip", "train", "--run-dir", str(tmp_path / "r"), "--dataset", "tiny", "image.depht=1"]) == 2
    assert "image.depht: not a CLIP model setting" in capsys.readouterr().err
    assert cli.main(["clip", "train", "--run-dir", str(tmp_path / "r"), "--dataset", "tiny", "--strategy", "PP"]) == 2
    assert "strategy='PP': allowed" in capsys.readouterr().err
