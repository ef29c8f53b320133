"""The schedules as tick tables: every op once, dependencies kept, idle ticks = the bubble formula
exactly, and the stash GPipe needs grows with M while 1F1B's is bounded by P."""
import itertools

import numpy as np
import pytest

from parallel.pipeline import (BWD, FWD, IDLE, ScheduleError, bubble_formula, bubble_ratio, build, check, render)

GRID = ([("gpipe", P, M, 1) for P, M in itertools.product((2, 3, 4), (1, 2, 4, 5, 8)) if M >= P]
        + [("1f1b", P, M, 1) for P, M in itertools.product((2, 3, 4), (2, 3, 4, 8, 9)) if M >= P]
        + [("circular", P, M, v) for P, M, v in itertools.product((2, 4), (4, 8), (1, 2, 3))])


def _ticks(s):
    """{(kind, global chunk, microbatch): (tick, device)} read back from the table."""
    out = {}
    for t, d in zip(*np.nonzero(s.kind != IDLE)):
        key = (int(s.kind[t, d]), int(s.chunk[t, d]) * s.stages + int(d), int(s.micro[t, d]))
        assert key not in out, f"{key} runs twice"
        out[key] = (int(t), int(d))
    return out


@pytest.mark.parametrize("name,P,M,v", GRID)
def test_bubble_equals_formula_and_dependencies_hold(name, P, M, v):
    s = build(name, P, M, v)
    ops = _ticks(s)
    C = P * v
    assert set(ops) == {(k, c, m) for k in (FWD, BWD) for c in range(C) for m in range(M)}
    for (k, c, m), (t, d) in ops.items():
        assert d == c % P
        if k == FWD and c > 0:
            assert ops[(FWD, c - 1, m)][0] < t
        if k == BWD:
            assert ops[(BWD, c + 1, m) if c < C - 1 else (FWD, c, m)][0] < t
    assert s.bubble_fraction() == bubble_formula(P, M, v)
    assert (s.idle_ticks() == 2 * (P - 1)).all()             # every device idles 2(P−1) ticks
    assert s.bubble_fraction() / (1 - s.bubble_fraction()) == bubble_ratio(P, M, v)
    assert s.sends() == {"activations": M * (C - 1), "cotangents": M * (C - 1)}


def test_stash_grows_with_m_for_gpipe_and_stays_at_p_for_1f1b():
    for P in (2, 4):
        gp = [build("gpipe", P, M).x_slots for M in (P, 2 * P, 4 * P)]
        of = [build("1f1b", P, M).x_slots for M in (P, 2 * P, 4 * P)]
        assert gp == [P, 2 * P, 4 * P]
        assert of == [P, P, P]


def test_slots_never_overwrite_a_live_value():
    """Replay the table: a stashed input / cotangent is read from the slot it was written to."""
    for name, P, M, v in [("gpipe", 3, 5, 1), ("1f1b", 4, 8, 1), ("circular", 2, 4, 3), ("circular", 4, 8, 2)]:
        s = build(name, P, M, v)
        xbuf = [dict() for _ in range(P)]
        gbuf = [dict() for _ in range(P)]
        for t in range(s.ticks):
            for d in range(P):
                k, c, m = s.kind[t, d], s.chunk[t, d] * P + d, s.micro[t, d]
                if k != IDLE and c > 0:
                    assert xbuf[d][s.x_slot[t, d]] == (c, m)
                if k == BWD and c < P * v - 1:
                    assert gbuf[d][s.g_slot[t, d]] == (c, m)
            for d in range(P):   # arrivals at the end of the tick
                k, c, m = s.kind[t, d], s.chunk[t, d] * P + d, s.micro[t, d]
                if k == FWD and c < P * v - 1:
                    xbuf[(d + 1) % P][s.recv_x[t, (d + 1) % P]] = (c + 1, m)
                if k == BWD and c > 0:
                    gbuf[(d - 1) % P][s.recv_g[t, (d - 1) % P]] = (c - 1, m)


@pytest.mark.parametrize("args,words", [
    (("zigzag", 2, 4, 1), "allowed gpipe, 1f1b, circular"),
    (("1f1b", 4, 2, 1), "microbatches=2 is fewer than"),
    (("gpipe", 2, 4, 2), "needs parallel.pipeline_schedule=circular"),
    (("circular", 4, 6, 2), "multiple of 4"),
])
def test_bad_shapes_are_one_line(args, words):
    with pytest.raises(ScheduleError, match=words) as e:
        check(*args)
    assert "\n" not in str(e.value)


def test_layers_must_split_into_stage_chunks():
    with pytest.raises(ScheduleError, match="model.layers=6 does not split .* 2 × 2 = 4"):
        check("circular", 2, 4, 2, layers=6)


def test_render_shows_one_row_per_stage():
    text = render(build("1f1b", 2, 2))
    assert text.splitlines() == ["stage 0: F0   F1   .    B0   .    B1", "stage 1: .    F0   B0   F1   B1   ."]


def test_pipeline_report_counts_from_the_table():
    from parallel.pipeline import format_pipeline, pipeline_report
    rep = pipeline_report(build("gpipe", 4, 4), activation_bytes=1000)
    assert rep["bubble_exact"] == rep["bubble_formula"] == "3/7" and rep["ticks"] == 14
    assert rep["stash_slots_per_stage"] == [0, 4, 4, 4]         # GPipe holds every microbatch's input
    assert rep["sends"] == {"activations": 12, "cotangents": 12}
    assert rep["useful_bytes_per_device"] == 24 * 1000 // 4
    assert rep["permute_bytes_per_device"] == 2 * 14 * 1000
    assert "bubble: 3/7" in "\n".join(format_pipeline(rep))


def test_op_executions_count_the_tick_loops_branches_as_the_schedule_runs_them():
    """Inside the tick loop's three-way switch, the forward branch runs M·v times per device and the
    backward branch M·v times, not on every tick; a two-way branch inside (the first / last chunk's
    ``lax.cond``) runs for 1 of the C chunks, and loops multiply; outside the tick loop, None."""
    from parallel.pipeline import executed_sent_bytes, op_executions
    s = build("circular", 2, 4, 2)                         # C = 4 chunks, 8 forward ops per device
    tick = ("while", s.ticks)
    assert op_executions((tick, ("branch", 1, 3)), s) == 8
    assert op_executions((tick, ("branch", 2, 3), ("while", 3)), s) == 24          # a 3-layer chunk's scan
    assert op_executions((tick, ("branch", 1, 3), ("branch", 1, 2)), s) == 8 / 4    # the embedding: chunk 0
    assert op_executions((tick, ("branch", 0, 3)), s) == s.ticks - 16
    assert op_executions((("while", 5),), s) is None and op_executions((), s) is None
    ops = [{"kind": "all-reduce", "sent_bytes": 10, "in_loop": True, "trip_count": s.ticks,
            "path": (tick, ("branch", 1, 3))},
           {"kind": "all-reduce", "sent_bytes": 1, "in_loop": False, "trip_count": 1, "path": ()}]
    assert executed_sent_bytes(ops, s) == {"all-reduce": 10 * 8 + 1}
