"""``lineage diffusion schedule``: the JSON holds the schedule's full arrays; bad flags are one line."""
import json

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax import diffusion as D


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_json_is_the_schedule(capsys, name):
    assert cli.main(["diffusion", "schedule", "--schedule", name, "--timesteps", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = D.make_schedule(name, 64)
    assert out["schedule"] == name and out["timesteps"] == 64
    np.testing.assert_array_equal(np.float32(out["betas"]), np.asarray(s.betas))
    np.testing.assert_array_equal(np.float32(out["alphas_cumprod"]), np.asarray(s.alphas_cumprod))


def test_schedule_table_text(capsys):
    assert cli.main(["diffusion", "schedule", "--timesteps", "1000"]) == 0
    out = capsys.readouterr().out
    assert "linear schedule, T = 1000" in out and "0.0001" in out and "0.02" in out


@pytest.mark.parametrize("argv, words", [(["--schedule", "sigmoid"], "--schedule=sigmoid: allowed linear, cosine"),
                                         (["--timesteps", "1"], "--timesteps=1"),
                                         (["--beta-start", "0.5", "--beta-end", "0.1"], "--beta-start=0.5")])
def test_bad_flags_are_one_line(capsys, argv, words):
    assert cli.main(["diffusion", "schedule", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
