"""The ReAct loop's tool boundary with a scripted policy: generation is cut exactly at the action marker,
the observation is the tool's and is masked out of the loss, errors and unknown tools become observations,
and a policy that never answers stops at the step limit."""
import numpy as np

from lineage_jax.reasoning import react, tools

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
