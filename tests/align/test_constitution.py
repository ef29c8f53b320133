"""The written constitution: its worked examples are what each principle says (checked against the task's own
predicates, which only measure), balanced, fixed by their seed, and a bad count is one clear error."""
import pytest

from lineage_jax.align import constitution as C, task


def test_worked_examples_follow_or_break_their_principle():
    truth = {"correct": lambda p, r: task.is_correct(p, r),
             "brief": lambda p, r: not any(w.strip(",") in task.FILLER for w in r.split()),
             "polite": lambda p, r: not task.is_rude(r)}
    ex = C.worked_examples(10)
    assert len(ex) == 10 * len(C.CONSTITUTION)
    for k, name in enumerate(C.NAMES):
        mine = [e for e in ex if e["principle"] == k]
        assert sum(e["follows"] for e in mine) == 5                       # half follow, half break
        assert all(truth[name](e["prompt"], e["response"]) == e["follows"] for e in mine)


def test_examples_are_fixed_by_seed_and_few_means_few():
    assert C.worked_examples(4, seed=3) == C.worked_examples(4, seed=3)
    assert C.worked_examples(4, seed=3) != C.worked_examples(4, seed=4)
    with pytest.raises(ValueError, match="per_principle=1"):
        C.worked_examples(1)


def test_render_lists_the_principles_in_priority_order():
    lines = C.render().splitlines()
    assert [line.split("]")[0].split("[")[1] for line in lines] == list(C.NAMES) == ["correct", "brief", "polite"]
