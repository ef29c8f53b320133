"""``lineage bench decode --quick --json``: the inference targets on a random GPT. Cached decoding is
>= 5x the recompute at 256 new tokens with no compilation after the first token; paged KV waste
<= 4% at block size 16 (a contiguous max-length cache wastes far more); speculative decoding's
tokens per target call within 10% of (1 - alpha^(gamma+1)) / (1 - alpha) at the measured alpha."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.bench import decode


@pytest.mark.slow   # a benchmark run
def test_bench_decode_quick_meets_the_targets(capsys):
    capsys.readouterr()
    assert cli.main(["bench", "decode", "--quick", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    a, b, c = r["kv_cache"], r["paged"], r["speculative"]
    assert a["new_tokens"] == 256 and a["speedup"] >= 5.0
    assert a["traces_after_first_token"] == 0 and a["backend_compiles_after_first_token"] == 0
    assert b["block_size"] == 16 and b["paged_waste"] <= 0.04 and b["contiguous_waste"] > 5 * b["paged_waste"]
    assert b["blocks_reused"] > 0 and b["decode_compiles"] <= 1
    assert 0.3 < c["alpha"] < 0.95                      # a draft that is neither perfect nor useless
    assert c["relative_error"] <= 0.10 and c["tokens_per_call"] > 1.5
    assert c["draft_tokens_accepted"] <= c["gamma"] * c["target_calls"]
    assert all(r["targets_met"].values()) and c["speedup"] > 0
    text = decode.report(r)
    assert "alpha" in text and "waste" in text and "MISSED" not in text
