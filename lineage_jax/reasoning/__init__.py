"""The reasoning chapter: in-context learning and induction heads, chain of thought and scratchpads, tools
(ReAct, Toolformer) and RL on reasoning from verifiable rewards (GRPO), over an arithmetic world a program checks.

    arith.py      problems (addition, multiplication, word problems), the two formats, the verifier
    tiny.py       a small decoder (attention-only or with MLPs) that can return its attention patterns
    induction.py  repeated-span data, in-context loss, prefix-matching and copying scores (Olsson et al. 2022)
    sft.py        the masked next-token loss and a pure supervised step
    sample.py     batched sampling of completions with their log-probabilities (one compile)
    cached.py     the same sampler with a KV cache (prefix read once, one position per token)
    evaluate.py   accuracy, self-consistency votes, pass@k
    grpo.py       group-relative advantages, the clipped objective with the k3 KL, a pure GRPO step
    tools.py      a safe calculator and the [tool(argument)] call format
    react.py      the ReAct loop: cut at the action, append the observation, mask it from the loss; agents in a batch
    toolformer.py Toolformer's filter L- - L+ >= tau_f, candidate calls, their gains, the fine-tuning set C*
"""
