"""Mixtures (``lineage_jax/data/mixture.py``): realised proportions lie within binomial error of the
weights over a long run; epoch limits hold (each epoch a permutation, a spent component's share
moves to the others, the end is one line); resuming at any position gives the same examples; the
sampler serves the components' own windows; ``data.mixture`` parses and refuses bad input in one
line; a training run on a mixture logs what it served."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_jax.config import ConfigError, load_config
from lineage_jax.data.loader import PackedSampler
from lineage_jax.data.mixture import MixtureEnded, MixturePlan, MixtureSampler, plot_mixture


def test_proportions_are_within_binomial_error_of_the_weights():
    plan = MixturePlan((1000, 300, 50), (5.0, 3.0, 2.0), (0, 0, 0), seed=7)
    n = 200_000
    comps, rows = plan.draws(0, n)
    p = np.array([0.5, 0.3, 0.2])
    counts = np.bincount(comps, minlength=3)
    assert np.all(np.abs(counts - n * p) < 4 * np.sqrt(n * p * (1 - p))), counts
    got = plan.realised(n)
    assert [c["count"] for c in got["components"]] == counts.tolist()
    assert got["components"][2]["epochs"] == counts[2] / 50
    for k, size in enumerate((1000, 300, 50)):                # every epoch of a component is a permutation
        r = rows[comps == k][:size]
        assert sorted(r.tolist()) == list(range(size))


def test_epoch_limits_hold_and_a_spent_share_moves_to_the_others():
    plan = MixturePlan((100, 40, 500), (1.0, 1.0, 1.0), (2.0, 0.5, 1.0), seed=3, names=("a", "b", "c"))
    assert plan.total == 200 + 20 + 500
    comps, rows = plan.draws(0, 720)
    assert np.bincount(comps).tolist() == [200, 20, 500]
    a = rows[comps == 0]
    assert sorted(a[:100]) == sorted(a[100:]) == list(range(100))           # two whole epochs of a
    assert len(set(rows[comps == 1].tolist())) == 20                      # half an epoch of b: no repeats
    last_b = np.flatnonzero(comps == 1)[-1]
    assert np.all(comps[last_b + 1:] != 1)
    with pytest.raises(MixtureEnded, match="ends after 720 examples") as e:
        plan.draws(700, 21)
    assert "\n" not in str(e.value)


_LONG = {}


@settings(max_examples=15, deadline=None)
@given(position=st.integers(0, 2500), count=st.integers(1, 500), block=st.sampled_from([64, 1024]))
def test_resuming_anywhere_gives_the_same_examples(position, count, block):
    args = dict(sizes=(30, 70, 9), weights=(1.0, 2.0, 0.5), epochs=(0, 12, 90), seed=11, block=block)
    if block not in _LONG:                                                # the run straight through, once
        _LONG[block] = MixturePlan(**args).draws(0, 3000)
    long_c, long_r = _LONG[block]
    c, r = MixturePlan(**args).draws(position, count)                   # a fresh plan: the resumed run
    np.testing.assert_array_equal(c, long_c[position:position + count])
    np.testing.assert_array_equal(r, long_r[position:position + count])


def _rows(n, value, L=8):
    tokens = np.full((n, L), value, np.int32) + np.arange(n, dtype=np.int32)[:, None] * 10
    return {"tokens": tokens, "segment_ids": np.ones((n, L), np.int32),
            "positions": np.tile(np.arange(L, dtype=np.int32), (n, 1)), "document": np.zeros((n, L), np.int32)}


def test_the_sampler_serves_each_components_own_windows(tmp_path):
    a, b = PackedSampler(_rows(5, 1000), 0, eos_id=0), PackedSampler(_rows(7, 5000), 0, eos_id=0)
    plan = MixturePlan((a.num_windows, b.num_windows), (1.0, 3.0), (0, 0), seed=2)
    mix = MixtureSampler([a, b], plan)
    batch = mix.batch_with_segments(40, 16)
    comps, rows = plan.draws(40, 16)
    for i, (k, r) in enumerate(zip(comps, rows)):
        want = (a, b)[k].windows_with_segments(np.array([r]))
        for key in want:
            np.testing.assert_array_equal(batch[key][i], want[key][0])
    np.testing.assert_array_equal(mix.batch(40, 16), batch["tokens"])
    assert mix.rows_read == 32
    assert plot_mixture(plan, 16, 20, tmp_path / "m.png").stat().st_size > 1000


def test_data_mixture_parses_and_bad_input_is_one_line(tmp_path):
    cfg = load_config("tiny", ["data.mixture=[{name: x, weight: 2, epochs: 1.5}, {name: y}]"])
    assert [(c.name, c.weight, c.epochs) for c in cfg.data.mixture] == [("x", 2.0, 1.5), ("y", 1.0, 0.0)]
    for override, want in (("data.mixture=[{name: x, weight: 0}]", "weight=0.0 must be a positive"),
                           ("data.mixture=[{name: x, epochs: -1}]", "epochs=-1.0 must be >= 0"),
                           ("data.mixture=[{name: x}, {name: x}]", "named twice"),
                           ("data.mixture=[{weight: 1}]", "needs a name"),
                           ("data.mixture=[{name: x, wieght: 1}]", "unknown key"),
                           ("data.mixture=3", "expected a list of")):
        with pytest.raises(ConfigError, match=want) as e:
            load_config("tiny", [override])
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="give it alone"):
        load_config("tiny", ["data.mixture=[{name: x}]", "data.tfds_name=y"])
    with pytest.raises(ConfigError, match="has no rows"):
        MixturePlan((0,), (1.0,), (0,))


@pytest.mark.slow
def test_training_on_a_mixture_logs_what_it_served(tmp_path):
    """Two prepared datasets mixed 3:1 with an epoch limit on the first: the run trains, and its
    mixture.json is the plan's own count of what the steps drew."""
    from lineage_jax.data.pipeline import prepare as prep
    from lineage_jax.train.loop import train
    from tests.data.test_prepare import make_corpus
    make_corpus(tmp_path / "corpus")
    cfg_p = prep.PrepareConfig(seq_len=32, eval_fraction=0.2, plot=False)
    prep.prepare([str(tmp_path / "corpus")], str(tmp_path / "a"), cfg_p)
    prep.prepare([str(tmp_path / "corpus" / "en1.txt"), str(tmp_path / "corpus" / "en2.txt")], str(tmp_path / "b"),
                 prep.PrepareConfig(seq_len=32, eval_fraction=0.0, plot=False))
    cfg = load_config("tiny", ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32",
                               "model.attn_chunks=1", "train.batch_size=8", "train.steps=6", "train.eval_every=6",
                               "train.eval_batches=1", "train.log_every=2", "optim.warmup_steps=1",
                               f"data.mixture=[{{name: {tmp_path / 'a'}, weight: 3, epochs: 1}}, "
                               f"{{name: {tmp_path / 'b'}, weight: 1}}]", f"run_dir={tmp_path / 'run'}"])
    summary = train(cfg, progress=False)
    assert summary["steps"] == 6 and np.isfinite(summary["final_loss"])
    logged = json.loads((tmp_path / "run" / "mixture.json").read_text())
    assert logged["examples"] == 48 and sum(c["count"] for c in logged["components"]) == 48
    a_rows = logged["components"][0]["count"] / logged["components"][0]["epochs"]
    assert logged["components"][0]["count"] <= a_rows                    # epochs=1 on a: at most its rows
    assert (tmp_path / "run" / "mixture.png").is_file()
    assert set(summary["mixture"]) == {str(tmp_path / "a"), str(tmp_path / "b")}


def test_mixture_preview_command_reports_the_plans_draws(tmp_path, capsys):
    """``lineage data mixture``: the realised counts add up to steps × batch, the weights are
    renormalised, the file is what it printed, and asking past the end of the mixture is one line."""
    from lineage_jax import cli
    from lineage_jax.data.pipeline import prepare as prep
    from tests.data.test_prepare import make_corpus
    make_corpus(tmp_path / "corpus")
    for name, files in (("a", ["en0.txt", "en1.txt", "en2.txt"]), ("b", ["en3.txt", "en4.txt"])):
        prep.prepare([str(tmp_path / "corpus" / f) for f in files], str(tmp_path / name),
                     prep.PrepareConfig(seq_len=32, eval_fraction=0.3, plot=False))
    mix = f"data.mixture=[{{name: {tmp_path / 'a'}, weight: 3}}, {{name: {tmp_path / 'b'}, weight: 1, epochs: 2}}]"
    argv = ["data", "mixture", mix, "model.context=32", "train.batch_size=4", "--steps", "10", "--out",
            str(tmp_path / "m"), "--json"]
    assert cli.main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["examples"] == 40 and [c["weight"] for c in got["components"]] == [0.75, 0.25]
    assert sum(c["count"] for c in got["components"]) == 40 and got["components"][1]["epochs"] <= 2
    assert json.loads((tmp_path / "m" / "mixture.json").read_text()) == got and (tmp_path / "m" / "mixture.png").is_file()
    assert cli.main(["data", "mixture", mix.replace("weight: 3}", "weight: 3, epochs: 1}"), "model.context=32",
                     "train.batch_size=4", "--steps", "1000", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "the mixture ends after" in err and err.count("\n") == 1
