"""The planner's formulas (``parallel/plan/``) on the JAX scaling book's worked example and on
cases whose answer is known: a model that cannot fit is rejected with its reason, rankings do not
depend on units, and the pipeline's bubble enters the step time."""
import dataclasses
import math

import pytest

from parallel.plan import CHIPS, Shape, collective_bytes, memory_per_chip, n_params, plan, shape_for_params
from parallel.plan.cost import weight_groups

# LLaMA-3-70B (the scaling book, "Training LLaMA 3 on TPUs": L 80, D 8192, F 28672, 64 heads, 8 KV heads, V 128256)
LLAMA3_70B = Shape("llama", 80, 8192, 64, 8, 28672, 128256, 4096)


def test_llama3_70b_worked_example():
    """The book's counts: vocabulary 2·D·V ≈ 2.1B, attention 2·D·H·(N+K)·L ≈ 12.1B, MLP 3·D·F·L ≈ 56.3B,
    ≈ 70.5B in all; 6·N FLOPs per token; 15T tokens on a full v5p pod (8960 chips) at 40% MFU ≈ 44 days;
    bf16 parameters ≈ 140 GB and fp32 Adam moments ≈ 560 GB."""
    g = {name: n for name, n, _ in weight_groups(LLAMA3_70B)}
    assert g["embed"] + g["head"] == pytest.approx(2.1e9, rel=0.01)
    assert g["q_o"] + g["k_v"] == pytest.approx(12.1e9, rel=0.01)
    assert g["mlp"] == pytest.approx(56.3e9, rel=0.01)
    N = n_params(LLAMA3_70B)
    assert N == pytest.approx(70.5e9, rel=0.005)
    days = 6 * N * 15e12 / (8960 * CHIPS["v5p"].flops * 0.4) / 86400
    assert days == pytest.approx(44, rel=0.03)
    mem = memory_per_chip(LLAMA3_70B, {}, zero=0, microbatches=1, schedule="1f1b", remat="full", rows=1,
                          param_bytes=2, grad_bytes=2, opt_bytes=8)
    assert mem["params"] == pytest.approx(140e9, rel=0.01) and mem["opt_state"] == pytest.approx(560e9, rel=0.01)


def test_70b_on_eight_a100s_is_rejected_with_the_reason():
    out = plan(LLAMA3_70B, CHIPS["a100"], 8, 64)
    assert out["plans"] == []
    assert all("GiB per chip" in r["reason"] or "split" in r["reason"] for r in out["rejected"])
    assert any("needs" in r["reason"] and "a100" in r["reason"] for r in out["rejected"])


def test_ranking_is_unchanged_when_every_rate_changes_unit():
    """Seconds → milliseconds (every rate ÷ 1000): each step time × 1000, the order identical."""
    s, chip = shape_for_params(1e9, seq=1024), CHIPS["v5e"]
    slow = dataclasses.replace(chip, flops=chip.flops / 1000, hbm_bw=chip.hbm_bw / 1000, ici_bw=chip.ici_bw / 1000,
                               dcn_bw=chip.dcn_bw / 1000)
    a, b = plan(s, chip, 32, 128), plan(s, slow, 32, 128)
    key = lambda p: (tuple(p["mesh"].items()), p["microbatches"], p["remat"])  # noqa: E731
    assert [key(p) for p in a["plans"]] == [key(p) for p in b["plans"]]
    assert b["plans"][0]["step_time_s"] == pytest.approx(1000 * a["plans"][0]["step_time_s"])


def test_bubble_stretches_compute_and_more_microbatches_shrink_it():
    s = Shape("llama", 8, 1024, 8, 0, 0, 32000, 1024)
    out = plan(s, CHIPS["h100"], 16, 64)
    by = {(p["mesh"]["stage"], p["microbatches"], p["mesh"]["tensor"], p["mesh"]["fsdp"], p["remat"]): p
          for p in out["plans"]}
    few, many = by[(4, 4, 1, 1, "none")], by[(4, 16, 1, 1, "none")]
    assert few["bubble"] == pytest.approx(3 / 7) and many["bubble"] == pytest.approx(3 / 19)
    assert few["terms_s"]["compute"] / many["terms_s"]["compute"] == pytest.approx((1 - 3 / 19) / (1 - 3 / 7))


def test_1f1b_activations_flat_in_m_gpipe_grows():
    s, mesh = Shape("gpt2", 8, 512, 8, seq=512), {"stage": 4}
    act = lambda sched, M: memory_per_chip(s, mesh, zero=0, microbatches=M, schedule=sched,  # noqa: E731
                                           remat="none", rows=2)["activations"]
    assert act("1f1b", 4) == act("1f1b", 16) and act("gpipe", 16) == 4 * act("gpipe", 4)


def test_shape_for_params_lands_near_the_size():
    for n in (1e9, 7e9, 70e9):
        s = shape_for_params(n)
        assert abs(n_params(s) - n) / n < 0.15 and s.layers % 4 == 0 and s.width % 128 == 0


def test_collectives_data_parallel_is_one_ring_all_reduce_of_the_gradients():
    s = Shape("gpt2", 2, 64, 4, vocab=64, seq=16)
    c = collective_bytes(s, {"data": 8}, zero=0, microbatches=1, rows=2)
    assert c["all-reduce"] == pytest.approx(2 * n_params(s) * 4 * 7 / 8)
    assert c["all-gather"] == c["reduce-scatter"] == c["collective-permute"] == 0
    assert math.isclose(c["total"], c["all-reduce"])


def test_no_overlap_bound_is_the_sum_of_the_terms_and_ranks_when_asked():
    """Full overlap (the roofline) takes the largest term, no overlap their sum: max ≤ sum ≤ 3·max, MFU
    scaled inversely; ``overlap="none"`` reports and ranks by the sum, and says so."""
    s, chip = shape_for_params(1e9, seq=1024), CHIPS["h100"]
    full, none = plan(s, chip, 32, 128), plan(s, chip, 32, 128, overlap="none")
    for p in full["plans"]:
        b, terms = p["step_time_bounds_s"], p["terms_s"].values()
        assert p["step_time_s"] == b["full_overlap"] == max(terms)
        assert b["no_overlap"] == pytest.approx(sum(terms)) and max(terms) <= b["no_overlap"] <= 3 * max(terms)
        assert p["mfu_bounds"]["no_overlap"] * b["no_overlap"] == pytest.approx(p["mfu"] * p["step_time_s"])
    times = [p["step_time_s"] for p in none["plans"]]
    assert times == sorted(times) and times[0] == pytest.approx(min(p["step_time_bounds_s"]["no_overlap"]
                                                                    for p in full["plans"]))
    assert "nothing overlaps" in none["assumptions"]["overlap"] and "overlap fully" in full["assumptions"]["overlap"]
    with pytest.raises(ValueError, match="overlap='some': allowed full, none"):
        plan(s, chip, 32, 128, overlap="some")


# Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM"),
# Table 1: GPT models (vocabulary 51,200, sequence 2048) on A100 80 GB nodes of 8, with their
# (tensor t, pipeline p) and GPUs (data d = GPUs / (t·p)): name, heads, hidden, layers, t, p, GPUs, batch
MEGATRON_TABLE_1 = [("1.7B", 24, 2304, 24, 1, 1, 32, 512), ("3.6B", 32, 3072, 30, 2, 1, 64, 512),
                    ("7.5B", 32, 4096, 36, 4, 1, 128, 512), ("18.4B", 48, 6144, 40, 8, 1, 256, 1024),
                    ("39.1B", 64, 8192, 48, 8, 2, 512, 1536), ("76.1B", 80, 10240, 60, 8, 4, 1024, 1792),
                    ("145.6B", 96, 12288, 80, 8, 8, 1536, 2304), ("310.1B", 128, 16384, 96, 8, 16, 1920, 2160),
                    ("529.6B", 128, 20480, 105, 8, 35, 2520, 2520), ("1008B", 160, 25600, 128, 8, 64, 3072, 3072)]


def megatron_plan(heads, width, layers, gpus, batch):
    """The planner in Megatron's search space: tensor × pipeline × data (no ZeRO), full activation
    recomputation, mixed-precision Adam's 16 bytes per parameter (2 + 2 + 12)."""
    s = Shape("gpt2", layers, width, heads, 0, 0, 51200, 2048)
    return s, plan(s, CHIPS["a100"], gpus, batch, param_bytes=2, grad_bytes=2, opt_bytes=12, remats=("full",),
                   fsdp=False)


def test_planner_reproduces_megatron_3d_configurations():
    """Parameter counts as the table's (within 0.5% from 7.5B up; the two smallest round 1.65B and 3.56B
    up). The paper's (t, p, d) takes the planner's best step time for 8 of the 10 models: it is the best
    plan for 7, and for 1.7B it ties with t = 2 (compute-bound, the same time; the tie-break on
    communication puts t = 2 first). For the other two (310.1B, 529.6B: fewer stages also fit) the paper's
    is the runner-up within 0.5%. Every best plan keeps tensor parallelism inside a node of 8 (the
    paper's takeaway #1) and adds pipeline stages only where the model needs them (takeaway #2)."""
    best_time, exact = 0, 0
    for name, heads, width, layers, t, p, gpus, batch in MEGATRON_TABLE_1:
        s, out = megatron_plan(heads, width, layers, gpus, batch)
        assert n_params(s) == pytest.approx(float(name[:-1]) * 1e9, rel=0.03 if gpus < 128 else 0.005)
        best = out["plans"][0]
        got = (best["mesh"]["tensor"], best["mesh"]["stage"], best["mesh"]["data"])
        assert best["mesh"]["fsdp"] == 1 and best["mesh"]["tensor"] <= 8
        theirs = [x for x in out["plans"] if (x["mesh"]["tensor"], x["mesh"]["stage"]) == (t, p)][0]
        exact += got == (t, p, gpus // (t * p))
        if theirs["step_time_s"] == pytest.approx(best["step_time_s"], rel=1e-9):
            best_time += 1
            assert got[1] == p, name                       # a tie moves only the tensor size, never the pipeline
        else:
            assert theirs["step_time_s"] <= 1.005 * best["step_time_s"], name
            assert got[0] == t and got[1] < p, name
    assert (exact, best_time) == (7, 8)
