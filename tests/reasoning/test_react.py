"""The ReAct loop's tool boundary with a scripted policy: generation is cut exactly at the action marker,
the observation is the tool's and is masked out of the loss, errors and unknown tools become observations,
and a policy that never answers stops at the step limit."""
import jax
import numpy as np

from lineage_jax.reasoning import arith, react, tiny, tools

TOOLS = {"calc": tools.calculate}


def scripted(*pieces):
    it = iter(pieces)
    seen = []

    def generate(text):
        seen.append(text)
        return next(it, "")
    return generate, seen


def test_stops_at_the_action_runs_the_tool_and_masks_the_observation():
    gen, seen = scripted("[calc(123*45)] and more text the model should not have written", ">5535.")
    out = react.react(gen, "123*45=", TOOLS)
    assert out["text"] == "123*45=[calc(123*45)]=5535;>5535." and out["stop"] == "answer"
    assert seen[1] == "123*45=[calc(123*45)]=5535;"            # the model resumes right after the observation
    m = react.loss_mask(out, len("123*45="))
    written = "".join(c for c, k in zip(out["text"], m) if k)
    assert written == "[calc(123*45)]>5535."
    assert "".join(c for c, k in zip(out["text"][7:], m[7:]) if not k) == "=5535;"


def test_errors_unknown_tools_and_step_limit():
    gen, _ = scripted("[calc(1/0)]", "[search(x)]", "[calc(2+]", "[calc(1+1)]", ">2.")
    out = react.react(gen, "q=", TOOLS, max_steps=4)
    assert out["stop"] == "step_limit" and len(out["calls"]) == 4
    assert out["calls"][0].startswith("=error: calculator: division by zero")
    assert out["calls"][1] == "=error: unknown tool 'search'; tools: calc;"
    assert out["calls"][2] == "=error: malformed call; write [tool(argument)];"
    assert out["calls"][3] == "=2;"
    gen, _ = scripted()
    assert react.react(gen, "q=", TOOLS)["stop"] == "no_progress"
    assert react.cut("abc") == "abc" and react.cut("a.b]") == "a." and react.cut("a]b.") == "a]"
    assert np.all(react.loss_mask({"text": "ab", "spans": []}, 0) == 1)


def test_tool_trace_masks_only_the_prompt_and_observation():
    p = arith.Problem("123*45=", 5535, (), "mul", 3)
    trace = react.tool_trace(p)
    assert trace["text"] == "123*45=[calc(123*45)]=5535;>5535."
    tokens, mask = react.encode_traces([trace], [len(p.prompt)], 40)
    targets = react.VOCAB.decode(tokens[0])[1:]
    learned = "".join(c for c, k in zip(targets, mask[0]) if k)
    assert learned == "[calc(123*45)]>5535."
    # the trace the loop builds from the model's two moves is the reference trace, observation and all
    gen, _ = scripted("[calc(123*45)]", ">5535.")
    assert react.react(gen, p.prompt, TOOLS) == {**trace, "calls": ["=5535;"]}


def test_a_batch_of_agents_at_different_steps_runs_each_as_if_alone():
    """Scripted per prompt: one agent answers at once, one calls twice, one never answers, one writes too much."""
    scripts = {"a=": [">1."], "b=": ["[calc(2*3)]", "[calc(6+1)]", ">7."], "c=": ["[calc(1)]"] * 9,
               "d=": ["x" * 50]}

    def generate(texts):
        return [scripts[t[:2]][t.count("]")] for t in texts]
    batch = react.run_batch(generate, list(scripts), TOOLS, max_steps=3, max_chars=40)
    alone = [react.run_batch(generate, [p], TOOLS, max_steps=3, max_chars=40)[0] for p in scripts]
    assert batch == alone
    assert [t["stop"] for t in batch] == ["answer", "answer", "step_limit", "too_long"]
    assert batch[1]["text"] == "b=[calc(2*3)]=6;[calc(6+1)]=7;>7." and len(batch[3]["text"]) == 40


def test_greedy_generator_decodes_a_ragged_batch_as_if_alone():
    """A real (random) model behind the loop: prompts of different lengths in one batch continue exactly as
    each does alone (same greedy tokens)."""
    cfg = tiny.TinyConfig(vocab=react.VOCAB.size, context=24, d=16, heads=2, layers=1)
    model, params = tiny.init(cfg, jax.random.key(0))
    generate = react.greedy_generator(lambda p, t: model.apply({"params": p}, t), params, window=24, max_new=6)
    prompts = ["4*5=[calc(4*5)]=20;", "7="]          # alone, each is padded to the same 2 rows: one compile
    together = generate(prompts)
    assert together == [generate([p])[0] for p in prompts]
    assert all(len(c) <= 6 for c in together)


def test_a_trace_that_mixes_lookup_and_calc_runs_as_if_alone_with_observations_masked():
    """Fact problems need the lookup tool and the calculator in one trace; a batch of such agents (and one that
    asks for a name the table lacks, and one calc-only agent) decodes each as if alone, and only what the model
    wrote is learned."""
    table = arith.fact_table(0, 12)
    box = tools.toolbox(table)
    probs = arith.fact_problems(table, 3, [1, 2, 3], seed=1)
    refs = {p.prompt: react.fact_trace(p, table) for p in probs}
    moves = {pr: [t["text"][a:b] for a, b in zip([len(pr)] + [e for _, e in t["spans"]],
                                                  [s for s, _ in t["spans"]] + [len(t["text"])])]
             for pr, t in refs.items()}
    moves["qqq="] = ["[lookup(qqq)]", ">0."]
    moves["4*5="] = ["[calc(4*5)]", ">20."]

    def generate(texts):
        return [moves[t[:t.index("=") + 1]][t.count("]")] for t in texts]
    batch = react.run_batch(generate, list(moves), box, max_steps=5)
    assert batch == [react.run_batch(generate, [p], box, max_steps=5)[0] for p in moves]
    for p in probs:                                  # the loop rebuilds the reference trace, observations and all
        t = batch[list(moves).index(p.prompt)]
        assert t == refs[p.prompt] and "[lookup(" in t["text"] and arith.parse_answer(t["text"]) == p.answer
        assert ("[calc(" in t["text"]) == (p.size > 1)
        m = react.loss_mask(t, len(p.prompt))
        learned = "".join(c for c, k in zip(t["text"], m) if k)
        assert learned == "".join(moves[p.prompt]) and not any(c in learned for c in t["calls"])
    assert batch[-2]["calls"][0].startswith("=error: lookup: 'qqq' is not in the table")
    assert batch[-1]["text"] == "4*5=[calc(4*5)]=20;>20."
    tokens, mask = react.encode_traces(batch[:3], [len(p.prompt) for p in probs], 96)   # all in the vocabulary
    assert mask.sum() == sum(len("".join(moves[p.prompt])) for p in probs)
