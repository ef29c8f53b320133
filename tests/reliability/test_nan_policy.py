"""Training never stops silently on NaN and never checkpoints a non-finite state (issue 15, cause 2).

A learning rate of 1e30 makes the first update finite and every later loss non-finite (the
logits overflow), so each policy is seen on a real divergence, not a mocked one."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lineage_jax import cli

TINY = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=8", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=1",
        "train.keep_checkpoints=20", "optim.warmup_steps=0", "optim.lr=1e30", "train.async_checkpointing=false"]


def saved_steps(run):
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def all_params_finite(run, step):
    tree = ocp.StandardCheckpointer().restore(run / "checkpoints" / str(step) / "state")
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["params"]))


def test_stop_policy_ends_in_one_line_and_saves_no_nan(tmp_path, capsys):
    run = tmp_path / "run"
    rc = cli.main(["train", "--no-progress", "--no-sample", *TINY, "train.nan_patience=2", f"run_dir={run}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "not finite for 2 steps in a row" in err, err
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    first_bad = next(i for i, loss in enumerate(losses) if not np.isfinite(loss)) + 1     # a step number
    assert saved_steps(run) == list(range(1, first_bad)) and saved_steps(run)
    assert all(all_params_finite(run, s) for s in saved_steps(run))
    assert f"latest checkpoint is step {first_bad - 1}" in err


def test_skip_policy_leaves_the_state_untouched_and_finishes(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--no-progress", "--no-sample", *TINY, "train.nan_policy=skip", f"run_dir={run}"]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not all(np.isfinite(losses))                     # the divergence happened ...
    assert saved_steps(run) == list(range(1, 9))
    assert all(all_params_finite(run, s) for s in saved_steps(run))   # ... and was never applied
    later = [ocp.StandardCheckpointer().restore(run / "checkpoints" / str(s) / "state")["params"] for s in (7, 8)]
    jax.tree.map(np.testing.assert_array_equal, *later)      # skipped updates change nothing


@pytest.mark.parametrize("override,message", [("train.nan_policy=maybe", "train.nan_policy='maybe': allowed stop, skip"),
                                              ("train.nan_patience=0", "train.nan_patience=0: must be a positive integer")])
def test_policy_settings_are_checked(override, message, capsys):
    assert cli.main(["train", override]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
