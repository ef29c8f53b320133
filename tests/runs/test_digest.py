"""The checkpoint digest (issue 16): the same under every sharding, device count and on a host copy;
any single changed bit, any swap of two elements changes it; computed where the data lives."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lineage_jax.runs import digest as D

RNG = np.random.default_rng(0)


def host_state():
    """Leaves of every width the hash handles, with shapes that divide an 8-device mesh."""
    return {"params": {"w": RNG.normal(size=(16, 24)).astype(np.float32),
                       "b": RNG.normal(size=(24,)).astype(ml_dtypes.bfloat16),
                       "h": RNG.normal(size=(8, 4)).astype(np.float16),
                       "i": RNG.integers(-9, 9, size=(8, 2, 4)).astype(np.int32)},
            "opt_state": ({"mu": RNG.normal(size=(16, 24)).astype(np.float32),
                           "count": np.uint32(7)},),
            "other": {"mask": RNG.random(16) < 0.5, "q": RNG.integers(-128, 127, size=(8, 8)).astype(np.int8),
                      "u": RNG.integers(0, 2**32, size=(8,), dtype=np.uint32)}}


STATE = host_state()


def meshes():
    devs = np.array(jax.devices())
    return {"dp": (Mesh(devs, ("data",)), lambda x: P()),                       # replicated (data parallel)
            "fsdp": (Mesh(devs, ("fsdp",)), lambda x: P("fsdp") if x.ndim else P()),   # ZeRO-3: first axis
            "tp": (Mesh(devs.reshape(2, 4), ("data", "model")),                  # last axis over 4, first over 2
                   lambda x: P(*([None] * (x.ndim - 1)), "model") if x.ndim >= 1 and x.shape[-1] % 4 == 0 else P()),
            "2d": (Mesh(devs.reshape(2, 4), ("data", "model")),
                   lambda x: P("data", "model") if x.ndim >= 2 and x.shape[1] % 4 == 0 else P())}


def place(state, name):
    mesh, spec = meshes()[name]
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(np.asarray(x)))), state)


def test_the_digest_is_the_same_on_one_device_eight_devices_under_any_mesh_and_on_the_host():
    want = D.digest(STATE)                                    # numpy leaves: the host copy
    assert set(want) == {"params", "opt_state", "other"} and all(len(d["sum"]) == 16 for d in want.values())
    assert D.digest(jax.device_put(STATE, jax.devices()[0])) == want
    for name in meshes():
        placed = place(STATE, name)
        assert D.digest(placed) == want, name
    tp = place(STATE, "tp")["params"]["w"]
    assert len({str(s.index) for s in tp.addressable_shards}) == 4 and not tp.is_fully_replicated


def test_the_jitted_device_reduction_equals_the_host_one_under_each_sharding():
    """On accelerators each leaf is reduced under jit where its shards are (``on="device"``); on CPU
    devices in numpy per shard. Both give the same integers for every dtype (bf16, int8, bool, ...)."""
    small = {"params": {"w": STATE["params"]["w"], "b": STATE["params"]["b"]},
             "other": {"mask": STATE["other"]["mask"], "q": STATE["other"]["q"]}}
    want = D.digest(small)
    for name in ("fsdp", "tp"):
        assert D.digest(place(small, name), on="device") == want, name


def test_prng_keys_are_hashed_by_their_key_data():
    keys = jax.random.split(jax.random.key(0), 8)
    state = {"other": {"keys": keys}}
    placed = jax.device_put(state, NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d")))
    assert D.digest(placed) == D.digest(state) == D.digest(state, on="device")
    assert D.leaf_table(state)[0][1] == "['keys']|key<fry>|(8,);"
    other = {"other": {"keys": jax.random.split(jax.random.key(1), 8)}}
    assert D.digest(other)["other"]["sum"] != D.digest(state)["other"]["sum"]


def leaves_of(state):
    return [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]


def changed(a, b):
    """Items whose sum differs, and whether every lane of each differs."""
    items = [k for k in a if a[k]["sum"] != b[k]["sum"]]
    return items, all(a[k]["sum"][:8] != b[k]["sum"][:8] and a[k]["sum"][8:] != b[k]["sum"][8:] for k in items)


def test_flipping_any_one_bit_of_any_one_element_changes_the_digest():
    """200 random (leaf, element, bit) flips over every dtype: the flipped leaf's item changes in BOTH
    lanes (for a fixed position each lane's term is a bijection of the element's bits), no other item."""
    want = D.digest(STATE)
    leaves = leaves_of(STATE)
    for _ in range(200):
        path, leaf = leaves[RNG.integers(len(leaves))]
        a = np.array(leaf)                                    # a copy
        flat = a.reshape(-1).view(np.uint8 if a.dtype.itemsize == 1 else f"u{a.dtype.itemsize}")
        at, bit = RNG.integers(flat.size), RNG.integers(1 if a.dtype == np.bool_ else 8 * a.dtype.itemsize)
        flat[at] ^= flat.dtype.type(1 << int(bit))
        state = jax.tree_util.tree_map_with_path(lambda p, x: a if p == path else x, STATE)
        items, both = changed(want, D.digest(state))
        assert items == [D.item_of(path)] and both, (jax.tree_util.keystr(path), at, bit)


def test_swapping_two_elements_or_two_leaves_changes_the_digest():
    """A multiset hash of values alone would not see a permutation: the key of each term is its global
    position (and its leaf), so 100 random swaps of two different values each change the item."""
    want = D.digest(STATE)
    leaves = [(p, x) for p, x in leaves_of(STATE) if np.asarray(x).size > 1]
    for _ in range(100):
        path, leaf = leaves[RNG.integers(len(leaves))]
        a = np.array(leaf).reshape(-1)
        i, j = RNG.choice(a.size, 2, replace=False)
        if a[i] == a[j]:
            continue
        a[[i, j]] = a[[j, i]]
        state = jax.tree_util.tree_map_with_path(lambda p, x: a.reshape(np.shape(leaf)) if p == path else x, STATE)
        assert changed(want, D.digest(state))[0] == [D.item_of(path)]
    swapped = {**STATE, "params": {**STATE["params"]}, "opt_state": ({**STATE["opt_state"][0]},)}
    swapped["params"]["w"], swapped["opt_state"][0]["mu"] = STATE["opt_state"][0]["mu"], STATE["params"]["w"]
    assert sorted(changed(want, D.digest(swapped))[0]) == ["opt_state", "params"]


def test_finiteness_is_reported_per_item_without_a_host_copy():
    state = jax.tree.map(np.array, STATE)
    state["params"]["b"][3] = np.inf                          # a bf16 leaf: numpy's isinexact misses it
    state["other"]["q"][0, 0] = 1                             # integers are never "not finite"
    _, finite = D.summarise(D.leaf_table(place(state, "fsdp")))
    assert finite == {"params": False, "opt_state": True, "other": True}
    _, finite = D.summarise(D.leaf_table(place(state, "tp"), on="device"))
    assert finite == {"params": False, "opt_state": True, "other": True}


def test_the_host_reduction_reads_only_this_process_shards_and_each_block_once(monkeypatch):
    """Replicated shards are counted once (replica 0), and a slab at a time: a small ``chunk`` gives the
    same sums as one block."""
    placed = place(STATE, "tp")
    seen = []
    real = D._row
    monkeypatch.setattr(D, "_row", lambda xp, x, tags, coords: (seen.append(np.shape(x)), real(xp, x, tags, coords))[1])
    rows = D._host_rows(placed["params"]["w"], D._tag("w"), chunk=16)
    assert sum(int(np.prod(s)) for s in seen) == STATE["params"]["w"].size        # 2x replicated, counted once
    assert max(int(np.prod(s)) for s in seen) <= 16
    np.testing.assert_array_equal(rows, D._host_rows(STATE["params"]["w"], D._tag("w")))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.complex64])
def test_wide_and_complex_host_leaves_are_hashed_word_by_word(dtype):
    a = (RNG.normal(size=(4, 3)) + (1j * RNG.normal(size=(4, 3)) if dtype == np.complex64 else 0)).astype(dtype)
    b = a.copy()
    b.reshape(-1).view(np.uint32)[5] ^= np.uint32(1 << 31)
    assert D.digest({"params": a}) != D.digest({"params": b})
    assert D.digest({"params": a})["params"]["layout"] != D.digest({"params": np.zeros(a.shape, np.float32)})["params"]["layout"]


def test_an_empty_leaf_has_the_digest_of_nothing_on_both_paths():
    import numpy as np
    state = {"params": {"e": np.zeros((0, 3), np.float32), "w": np.ones((2, 3), np.float32)}}
    host, device = D.digest(state, on="host"), D.digest(state, on="device")
    assert host == device
    alone = D.digest({"params": {"w": np.ones((2, 3), np.float32)}})
    assert host["params"]["sum"] == alone["params"]["sum"]           # no element: nothing added
    assert host["params"]["layout"] != alone["params"]["layout"]     # but the layout records the leaf
