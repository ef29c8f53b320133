"""The calculator evaluates every well-formed expression exactly (hypothesis, against a separate evaluation
of the generated tree) and refuses everything else in one line; the call format parses and every failure
becomes an observation, never an exception."""
import pytest
from hypothesis import given, settings, strategies as st

from lineage_jax.reasoning import tools

ints = st.integers(0, 10 ** 5)
trees = st.recursive(ints, lambda sub: st.tuples(st.sampled_from("+-*"), sub, sub) | st.tuples(st.just("neg"), sub),
                     max_leaves=6)


def render(t) -> str:
    if isinstance(t, int):
        return str(t)
    if t[0] == "neg":
        return f"-({render(t[1])})"
    return f"({render(t[1])}{t[0]}{render(t[2])})"


def value(t) -> int:
    if isinstance(t, int):
        return t
    if t[0] == "neg":
        return -value(t[1])
    a, b = value(t[1]), value(t[2])
    return {"+": a + b, "-": a - b, "*": a * b}[t[0]]


@settings(max_examples=200, deadline=None)
@given(trees)
def test_every_well_formed_expression_is_exact(t):
    text = render(t)
    if len(text) > tools.MAX_CHARS or abs(value(t)) >= tools.MAX_ABS:
        with pytest.raises(tools.ToolError):
            tools.calculate(text)
    else:
        assert tools.calculate(text) == value(t)


@settings(max_examples=100, deadline=None)
@given(st.integers(-10 ** 6, 10 ** 6), st.integers(1, 1000))
def test_exact_division_and_precedence(a, b):
    assert tools.calculate(f"{a * b}/{b}") == a
    assert tools.calculate(f"2+{b}*3") == 2 + 3 * b
    if a % b:
        with pytest.raises(tools.ToolError, match="not a whole number"):
            tools.calculate(f"{a}/{b}")


@pytest.mark.parametrize("bad,why", [("", "empty"), ("1+", "unexpected end"), ("2**3", "unexpected"),
                                     ("__import__('os')", "unexpected"), ("1/0", "division by zero"),
                                     ("(1+2", "expected"), ("1e9", "unexpected"), ("9" * 70, "at most"),
                                     ("999999999*999999999*99", "exceeds"), ("3 4", "space inside a number")])
def test_everything_else_is_refused_in_one_line(bad, why):
    with pytest.raises(tools.ToolError, match=why) as e:
        tools.calculate(bad)
    assert "\n" not in str(e.value)


def test_calls_and_observations():
    calc = {"calc": tools.calculate}
    assert tools.parse_call("so [calc(12*(3+4))]") == ("calc", "12*(3+4)")
    assert tools.calculate(" 12 * ( 3 + 4 ) ") == 84
    assert tools.parse_call("[calc(1+2)] then more") is None
    assert tools.observe("x [calc(12*(3+4))]", calc) == "84"
    assert tools.observe("x [calc(1/0)]", calc).startswith("error: calculator: division by zero")
    assert tools.observe("x [search(cats)]", calc) == "error: unknown tool 'search'; tools: calc"
    assert tools.observe("x calc 1+2", calc).startswith("error: malformed call")


# --------------------------------------------------------------------------- the lookup tool over a fact table

from lineage_jax.reasoning import arith  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 40), st.text(max_size=12))
def test_lookup_answers_every_generated_name_and_refuses_anything_else(seed, n, other):
    table = arith.fact_table(seed, n)
    read = tools.lookup(table)
    assert len(table) == n and all(10 <= v < 1000 for v in table.values())
    for name, v in table.items():
        assert read(name) == v and read(f" {name} ") == v
    if other.strip() not in table:
        with pytest.raises(tools.ToolError, match="lookup: .*(not a name|not in the table)") as e:
            read(other)
        assert "\n" not in str(e.value)


def test_lookup_messages_and_the_toolbox():
    table = {"zor": 412, "kip": 57}
    box = tools.toolbox(table)
    assert sorted(box) == ["calc", "lookup"] and sorted(tools.toolbox()) == ["calc"]
    assert tools.observe("x [lookup(zor)]", box) == "412"
    assert tools.observe("x [lookup(vem)]", box) == "error: lookup: 'vem' is not in the table; names: kip, zor"
    assert tools.observe("x [lookup(1+2)]", box).startswith("error: lookup: '1+2' is not a name; allowed:")
    assert tools.observe("x [lookup()]", box).startswith("error: lookup: '' is not a name")
    assert tools.observe("x [lookup(zor)]", tools.toolbox()) == "error: unknown tool 'lookup'; tools: calc"
