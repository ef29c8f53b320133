"""Checkpoint save/restore with the per-shard digest (issue 16): a step saved under one mesh verifies
when restored under another; no full-state host copy is made; checkpoints written with the earlier
SHA-256 digest are still verified (the old way) and their damage still detected."""
import shutil

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lineage_jax.runs import checkpoint as ckpt, digest as D

RNG = np.random.default_rng(1)
STATE = {"params": {"w": RNG.normal(size=(16, 24)).astype(np.float32), "b": RNG.normal(size=(24,)).astype(np.float32)},
         "opt_state": ({"mu": RNG.normal(size=(16, 24)).astype(np.float32)},), "step": np.int32(5)}
DEVS = np.array(jax.devices())
FSDP = Mesh(DEVS, ("fsdp",))
TP = Mesh(DEVS.reshape(2, 4), ("data", "model"))


def placed(mesh, spec):
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(np.asarray(x)))), STATE)


def fsdp(x):
    return P("fsdp") if x.ndim else P()


def tp(x):
    return P(None, "model") if x.ndim == 2 else P("model") if x.ndim == 1 else P()


def abstract(mesh, spec):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                       sharding=NamedSharding(mesh, spec(np.asarray(x)))), STATE)


def save(run, step, state, meta=None):
    with ckpt.manager(run, async_save=False) as m:
        if meta is None:
            ckpt.save(m, step, state, {"step": step})
        else:       # a checkpoint as an earlier version wrote it: its own digest in meta
            import orbax.checkpoint as ocp
            m.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def test_saved_under_fsdp_restores_and_verifies_under_tensor_parallel_and_one_device(tmp_path, monkeypatch):
    """The restore matrix in one process, and the spy: neither save nor restore gathers the state to a
    host (no ``host_copy``, no ``process_allgather``, no ``device_get`` of more than a few words)."""
    def forbidden(*a, **k):
        raise AssertionError("a full-state gather")
    fetched = []
    real_get = jax.device_get
    monkeypatch.setattr(ckpt, "host_copy", forbidden)
    monkeypatch.setattr(jax.experimental.multihost_utils, "process_allgather", forbidden)
    monkeypatch.setattr(jax, "device_get", lambda x: (fetched.append(x), real_get(x))[1])
    save(tmp_path, 1, placed(FSDP, fsdp))
    for mesh, spec in ((TP, tp), (FSDP, fsdp), (Mesh(DEVS[:1], ("one",)), lambda x: P())):
        with ckpt.manager(tmp_path, async_save=False, create=False) as m:
            step, state, meta = ckpt.restore_latest_good(m, abstract(mesh, spec))
        assert step == 1 and state["params"]["w"].sharding.mesh == mesh
        assert meta["digest"] == D.digest(STATE) and set(meta["digest"]["params"]) == {"sum", "algo", "layout"}
        np.testing.assert_array_equal(np.asarray(state["params"]["w"]), STATE["params"]["w"])
    assert all(np.asarray(real_get(x)).nbytes <= 64 for x in jax.tree.leaves(fetched))


def test_other_data_under_the_meta_of_a_step_is_a_digest_mismatch(tmp_path):
    save(tmp_path, 1, placed(FSDP, fsdp))
    changed = jax.tree.map(np.copy, STATE)
    changed["opt_state"][0]["mu"][3, 7] = np.nextafter(changed["opt_state"][0]["mu"][3, 7], np.inf)   # one ulp
    save(tmp_path, 2, placed(FSDP, fsdp))
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
    save(tmp_path / "b", 1, jax.device_put(changed, jax.devices()[0]))
    shutil.copytree(tmp_path / "b" / "checkpoints" / "1" / "state", tmp_path / "checkpoints" / "1" / "state")
    shutil.rmtree(tmp_path / "checkpoints" / "2")                     # step 1: other data, step 1's meta
    lines = []
    with ckpt.manager(tmp_path, async_save=False, create=False) as m:
        try:
            ckpt.restore_latest_good(m, abstract(TP, tp), log=lines.append)
        except ckpt.CheckpointError as e:
            said = str(e)
    assert "step 1: digest mismatch: opt_state" in said and lines == []


def test_checkpoints_with_the_earlier_sha256_digest_are_verified_the_old_way(tmp_path):
    state = placed(FSDP, fsdp)
    old = ckpt.sha256_digest(state)
    assert set(old["params"]) == {"sha256", "layout"} and old["params"]["layout"] == D.digest(STATE)["params"]["layout"]
    save(tmp_path, 1, state, {"step": 1, "digest": old})
    bad = jax.tree.map(np.copy, STATE)
    bad["params"]["b"][0] += 1
    save(tmp_path, 2, jax.device_put(bad, jax.devices()[0]), {"step": 2, "digest": old})   # step 1's digest
    lines = []
    with ckpt.manager(tmp_path, async_save=False, create=False) as m:
        step, restored, meta = ckpt.restore_latest_good(m, abstract(TP, tp), log=lines.append, move_bad=False)
    assert step == 1 and meta["digest"] == old
    assert lines[0].startswith("checkpoint step 2") and "(digest mismatch: params)" in lines[0], lines
    np.testing.assert_array_equal(np.asarray(restored["params"]["b"]), STATE["params"]["b"])


def test_a_malformed_digest_in_meta_leaves_the_finiteness_check():
    for meta in ({"digest": "x"}, {"digest": {"params": "x", "opt_state": 3}}, {"digest": {"params": {"sum": "0"}}}):
        assert ckpt._problem(STATE, meta) is None, meta
    bad = jax.tree.map(np.copy, STATE)
    bad["params"]["w"][0, 0] = np.nan
    assert ckpt._problem(bad, {"digest": "x"}) == "params not finite"


def test_a_digest_from_another_algorithm_is_checked_for_finiteness_only_and_said():
    """A checkpoint whose digest this version cannot compute (another ``algo``) is not damage: its step must
    not be set aside; it is checked for finite values, and the log says the digest went unverified."""
    now = D.digest(STATE)
    other = {k: {**v, "algo": "a-future-hash", "sum": "0" * 16} for k, v in now.items()}
    lines = []
    assert ckpt._problem(STATE, {"digest": other}, lines.append) is None
    assert len(lines) == 1 and "a-future-hash" in lines[0] and "finite values only" in lines[0]
    changed = {k: {**v, "sum": "0" * 16} for k, v in now.items()}          # the same algo, another sum
    assert ckpt._problem(STATE, {"digest": changed}).startswith("digest mismatch")
