"""``lineage diffusion train / sample`` end to end on a tiny U-Net: a run directory that resumes where it
stopped (the resumed run equals the uninterrupted one), PNG grids of the requested size that a seed fixes,
and every user error one line before anything compiles."""
import json

import numpy as np
import pytest
from PIL import Image

from lineage_jax import cli
from lineage_jax.config import UserError
from lineage_jax.data import digits

TINY = ["base=8", "mults=1", "groups=2", "timesteps=50", "batch=16", "log_every=1", "ckpt_every=2"]


def _need_digits():
    try:
        digits.digits_csv()
    except UserError:
        pytest.skip("scikit-learn (its bundled digits file) is not installed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run trained 3 steps, then resumed to 4 (the resume under test), and a straight 4-step run."""
    _need_digits()
    root = tmp_path_factory.mktemp("diffusion_run")
    for name, plan in (("resumed", (3, 4)), ("straight", (4,))):
        for steps in plan:
            assert cli.main(["diffusion", "train", "--run-dir", str(root / name), "--steps", str(steps),
                             "--no-progress", *TINY]) == 0
    return root


def test_resumed_run_equals_the_uninterrupted_one(trained):
    rows = {n: [json.loads(x) for x in (trained / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("resumed", "straight")}
    assert [r["step"] for r in rows["resumed"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in rows["resumed"]], [r["loss"] for r in rows["straight"]], rtol=1e-5)
    from lineage_jax.imagegen.run import load_run
    _, a, _, _ = load_run(trained / "resumed")
    _, b, _, _ = load_run(trained / "straight")
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_sample_writes_the_requested_grid_and_the_seed_fixes_it(trained, tmp_path, capsys):
    run = str(trained / "straight")
    argv = lambda out, seed: ["diffusion", "sample", "--run-dir", run, "--n", "12", "--steps", "5", "--seed",
                              str(seed), "--out", str(tmp_path / out)]
    assert cli.main(argv("a.png", 1)) == 0 and cli.main(argv("b.png", 1)) == 0 and cli.main(argv("c.png", 2)) == 0
    assert "wrote" in capsys.readouterr().out
    img = Image.open(tmp_path / "a.png")
    assert img.format == "PNG" and img.size == (10 * 9 + 1, 2 * 9 + 1)      # 12 images, 10 a row, 8x8 + 1 px padding
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    # DDIM keeping the model's ε̂ past the clipped x̂_0 (--model-eps) is another chain from the same noise
    assert cli.main(argv("d.png", 1) + ["--model-eps"]) == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "d.png").read_bytes()


@pytest.mark.slow
def test_ddpm_sampling_of_one_label(trained, tmp_path):
    """The ancestral sampler's T-step chain (another compile; the DDIM test above is its fast sibling)."""
    assert cli.main(["diffusion", "sample", "--run-dir", str(trained / "straight"), "--n", "4", "--label", "7",
                     "--sampler", "ddpm", "--out", str(tmp_path / "d.png")]) == 0
    assert Image.open(tmp_path / "d.png").size == (2 * 9 + 1, 2 * 9 + 1)


def test_a_finished_run_has_nothing_to_do_and_another_model_is_refused(trained, capsys):
    assert cli.main(["diffusion", "train", "--run-dir", str(trained / "straight"), "--steps", "4", "--no-progress",
                     *TINY]) == 0
    assert "nothing to do" in capsys.readouterr().out
    rc = cli.main(["diffusion", "train", "--run-dir", str(trained / "straight"), "--steps", "4", *TINY, "base=16",
                   "groups=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds a run of another model (model.base: 8 there, 16 here)" in err[0]


@pytest.mark.parametrize("argv, msg", [
    (["train", "--space", "pixels"], "error: --space='pixels': allowed pixel, latent"),
    (["train", "--parallel", "tp"], "error: --parallel='tp': allowed dp, fsdp"),
    (["train", "lr=fast"], "error: lr=fast: expected a number"),
    (["train", "colour=red"], "error: unknown key 'colour'"),
    (["sample", "--label", "12", "--out", "x.png"], "error: --label=12: a digit 0-9"),
    (["sample", "--sampler", "euler", "--out", "x.png"], "error: sampler='euler': allowed ddpm, ddim"),
    (["sample", "--eta", "2", "--out", "x.png"], "error: --eta=2.0: must be between 0"),
    (["sample", "--out", "x.png"], "error: --run-dir {run}: not a run directory (no config.yaml)"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, msg):
    run = tmp_path / "nothing"
    rc = cli.main(["diffusion", argv[0], "--run-dir", str(run), *argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(msg.format(run=run)), err
