"""Pipeline parallelism (``lineage_jax/train/pipeline.py``): every schedule, alone and composed
with data / FSDP / tensor / sequence / expert parallelism, for GPT-2, Llama and GPT-2 with MoE
groups, and on packed rows, computes what one device computes (loss and gradients over 3 steps;
MoE metrics too); 1F1B's compiled temporaries stay flat in M while GPipe's grow; bad pipeline
shapes are one line before anything compiles."""
import jax
import numpy as np
import pytest

from lineage_jax.config import ConfigError, load_config
from lineage_jax.train.pipeline import circular_order, make_pipeline_train_step
from lineage_jax.train.setup import build
from parallel.report.memory import memory
from tests.parallel.test_parallel_gspmd import rel_err, without_key_bias

MODEL = ["model.layers=4", "model.scan_layers=true", "model.width=32", "model.heads=4", "model.context=16", "model.attn_chunks=2",
         "model.vocab_multiple=8", "train.batch_size=16", "train.steps=20", "optim.warmup_steps=2", "optim.lr=3e-3"]
LLAMA = MODEL + ["model.arch=llama", "model.kv_heads=2", "model.tied=false", "model.layers=2"]   # a layer a stage
MOE = MODEL + ["model.moe_every=2", "model.experts=4", "model.moe_k=2", "model.moe_router=gshard",
               "model.moe_backend=capacity", "model.capacity_factor=2.0"]         # a (dense, MoE) unit per stage
STEPS = 3
_RUNS: dict = {}


def pp(schedule, stages, micro, virtual=1, **mesh):
    axes = {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
    return ([f"parallel.pipeline_schedule={schedule}", f"parallel.pipeline_stages={stages}",
             f"parallel.microbatches={micro}", f"parallel.virtual_stages={virtual}"]
            + [f"mesh.{a}={n}" for a, n in axes.items()])


def run(overrides, devices, base=MODEL):
    """Adam's first moment after one step (0.1·g: the reduced, clipped gradient), the losses,
    gradient norms and MoE metrics of 3 steps, and the final parameters."""
    key = (tuple(base), tuple(overrides), devices)
    if key not in _RUNS:
        setup = build(load_config("tiny", base + list(overrides)), devices=jax.devices()[:devices],
                      compile_eval=False)
        state = setup.init_state(jax.random.key(0))
        rng = np.random.default_rng(0)
        losses, norms, moe, mu = [], [], [], None
        for _ in range(STEPS):
            state, m = setup.train_step(state, setup.put_batch(rng.integers(0, 257, (16, 17))))
            losses.append(float(m["loss"]))
            norms.append(float(m["grad_norm"]))
            moe.append([float(m[k]) for k in ("moe_aux_loss", "moe_dropped") if k in m]
                       + list(np.asarray(m.get("moe_load", []))))
            mu = jax.device_get(state.opt_state[1][0].mu) if mu is None else mu
        _RUNS[key] = {"mu": mu, "losses": np.array(losses), "norms": np.array(norms), "moe": np.array(moe),
                      "final": jax.device_get(state.params)}
    return _RUNS[key]


def assert_equals_one_device(out, base=MODEL):
    ref = run(["mesh.data=1"], 1, base)
    assert rel_err(out["mu"], ref["mu"]) <= 1e-5
    np.testing.assert_allclose(out["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(out["norms"], ref["norms"], rtol=1e-5)
    np.testing.assert_allclose(out["moe"], ref["moe"], rtol=1e-5, atol=1e-7)   # aux loss, drops, load
    assert rel_err(without_key_bias(out["final"]), without_key_bias(ref["final"])) <= 1e-4


ALONE = [("circular", 2, 2, 2)]   # default: the ring, interleaved; 1F1B runs composed below
ALONE_SLOW = [("gpipe", 2, 2, 1), ("gpipe", 2, 4, 1), ("1f1b", 2, 2, 1), ("1f1b", 2, 4, 1), ("circular", 2, 4, 2),
              ("gpipe", 4, 4, 1), ("1f1b", 4, 8, 1), ("1f1b", 4, 16, 1), ("gpipe", 2, 8, 1), ("circular", 2, 8, 2)]


@pytest.mark.parametrize("schedule,P,M,v", ALONE + [pytest.param(*a, marks=pytest.mark.slow) for a in ALONE_SLOW])
def test_schedule_equals_one_device(schedule, P, M, v):
    assert_equals_one_device(run(pp(schedule, P, M, v), P))


COMPOSED = {
    "PPxDPxTP": (pp("1f1b", 2, 2, data=2, tensor=2), 8),
    "PPxDP": (pp("gpipe", 2, 4, data=4), 8),
    "PPxTP": (pp("1f1b", 2, 2, tensor=4), 8),
    "PPxFSDP": (pp("1f1b", 2, 2, fsdp=4) + ["parallel.zero_stage=3"], 8),
    "circularxDP": (pp("circular", 2, 2, 2, data=2), 4),
    "PPxTP+SP": (pp("1f1b", 2, 2, tensor=2) + ["parallel.sequence_parallel=true"], 4),
}


@pytest.mark.parametrize("name", [n if n == "PPxDPxTP" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in COMPOSED])
def test_composed_equals_one_device(name):
    overrides, devices = COMPOSED[name]
    assert_equals_one_device(run(overrides, devices))


# Llama (RoPE, GQA with 2 KV heads split over tensor, SwiGLU, RMSNorm, untied head) and GPT-2 with
# MoE groups (every stage's balance losses in the objective; experts over an expert axis inside each
# stage, their all-to-alls inside the pipeline's ticks)
MODELS = {
    "llama/PPxTP": (LLAMA, pp("1f1b", 2, 2, tensor=2), 4),
    "llama/circular": (LLAMA + ["model.layers=4"], pp("circular", 2, 2, 2), 2),
    "llama/PPxFSDP": (LLAMA, pp("gpipe", 2, 4, fsdp=2) + ["parallel.zero_stage=3"], 4),
    "moe/PPxEP": (MOE, pp("1f1b", 2, 2, expert=2), 4),
    "moe/PPxEPxDP": (MOE, pp("gpipe", 2, 4, data=2, expert=2), 8),
    "moe/PPxEPxTP": (MOE, pp("1f1b", 2, 2, expert=2, tensor=2), 8),
}


@pytest.mark.parametrize("name", [n if n == "llama/PPxTP" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODELS])
def test_models_under_the_pipeline_equal_one_device(name):
    base, overrides, devices = MODELS[name]
    out = run(overrides, devices, base)
    assert_equals_one_device(out, base)
    if base is MOE:
        assert out["moe"][:, 0].min() > 0 and out["moe"][:, 1].max() > 0   # aux loss counted, drops exercised


@pytest.mark.slow   # packed rows' own equality (no pipeline) is tests/train/test_packed_training.py
def test_packed_rows_under_the_pipeline_equal_one_device():
    """Segment ids and restarting positions reach every chunk; the weighted loss is normalised by the
    global count of counted targets, whatever the microbatch and device holding a row."""
    from tests.train import test_packed_training as packed
    ref = packed.train_packed_with(packed.STRATEGIES["one"] + ["model.scan_layers=true"], 1)
    out = packed.train_packed_with(["model.scan_layers=true"] + pp("1f1b", 2, 2, data=4), 8)
    np.testing.assert_allclose(out[0], ref[0], rtol=2e-5)
    assert rel_err(without_key_bias(out[1]), without_key_bias(ref[1])) < 2e-4


def temp_bytes(schedule, micro, rows_per_micro=4):
    """Compiled temporaries of the train step alone, with the microbatch size fixed."""
    cfg = load_config("tiny", MODEL + pp(schedule, 2, micro) + [f"train.batch_size={rows_per_micro * micro}",
                                                                 "model.context=32", "model.width=64"])
    setup = build(cfg, devices=jax.devices()[:2], compile_steps=False)
    with setup.context():
        compiled = jax.jit(make_pipeline_train_step(setup)).lower(setup.abstract_state(),
                                                                  setup.abstract_batch()).compile()
    return memory(compiled)["temp"]


@pytest.mark.slow   # four compiles; the schedule's own stash count is tests/parallel/test_pipeline_schedule.py
def test_1f1b_memory_is_flat_in_m_while_gpipe_grows():
    """One stashed chunk input is [b, T, D] f32 = 4·32·64·4 bytes; from M = 2 to M = 8 GPipe stashes
    six more per stage, 1F1B none (it holds at most P = 2)."""
    stash = 4 * 32 * 64 * 4
    gpipe = temp_bytes("gpipe", 8) - temp_bytes("gpipe", 2)
    one_f_one_b = temp_bytes("1f1b", 8) - temp_bytes("1f1b", 2)
    assert gpipe >= 6 * stash
    assert one_f_one_b < stash


def test_circular_order_puts_chunk_c_on_device_c_mod_p():
    order = circular_order(8, 2, 2)             # chunks of 2 layers: 0 1 | 2 3 | 4 5 | 6 7
    assert order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7]   # device 0: chunks 0, 2; device 1: chunks 1, 3
    assert sorted(order.tolist()) == list(range(8))


@pytest.mark.parametrize("overrides,words", [
    (pp("1f1b", 2, 2) + ["model.layers=3"], r"model.layers=3 does not split into .* 2 × 1 = 2 equal chunks"),
    (pp("circular", 2, 2, 2) + ["model.layers=6"], r"2 × 2 = 4 equal chunks; use a multiple of 4"),
    (pp("1f1b", 4, 2), r"parallel.microbatches=2 is fewer than parallel.pipeline_stages=4"),
    (pp("1f1b", 2, 3), r"train.batch_size=16 does not split into parallel.microbatches=3"),
    (pp("gpipe", 2, 2, 2), r"parallel.virtual_stages=2 needs parallel.pipeline_schedule=circular"),
    (pp("circular", 2, 3, 2) + ["train.batch_size=6"], r"multiple of 2"),
    (pp("zigzag", 2, 2), r"parallel.pipeline_schedule='zigzag': allowed gpipe, 1f1b, circular"),
    (pp("1f1b", 2, 2) + ["model.dropout=0.1"], r"does not run model.dropout=0.1 yet"),
    (pp("1f1b", 2, 2) + ["train.grad_accum=2"], r"does not run train.grad_accum=2 yet"),
    (pp("1f1b", 2, 2) + ["model.arch=llama", "model.moe_every=1", "model.experts=4"],
     r"does not run model.arch=llama with model.moe_every=1 \(Mixtral balances its router over the whole batch"),
    (pp("1f1b", 4, 4) + ["model.moe_every=2", "model.experts=4"],
     r"model.layers=4 does not split .* 4 equal chunks \(model.moe_every=2: units of 2 blocks\); use a multiple of 8"),
])
def test_bad_pipeline_config_is_one_line(overrides, words):
    with pytest.raises(ConfigError, match=words) as e:
        load_config("tiny", MODEL + overrides)
    assert "\n" not in str(e.value)


def test_batch_that_does_not_split_over_data_devices_is_one_line():
    """Microbatches of 16/8 = 2 rows cannot split over 4 data-parallel devices: refused before compiling."""
    cfg = load_config("tiny", MODEL + pp("1f1b", 2, 8, data=4))
    with pytest.raises(ValueError, match=r"train.batch_size/parallel.microbatches \(16/8\)=2 does not split over "
                                         r"the 4 data-parallel devices") as e:
        build(cfg, devices=jax.devices()[:8], compile_steps=False)
    assert "\n" not in str(e.value)


@pytest.mark.slow   # the step equality above is the proof; this is the command a user runs
def test_lineage_train_runs_the_pipeline(tmp_path):
    from lineage_jax import cli
    assert cli.main(["train", *MODEL, *pp("1f1b", 2, 4, data=2, tensor=2), "train.steps=2", "train.eval_every=0",
                     f"run_dir={tmp_path / 'run'}", "--no-progress", "--no-sample"]) == 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()
