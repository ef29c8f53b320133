"""The reasoning chapter: in-context learning and induction heads, chain of thought and scratchpads, and
RL on reasoning from verifiable rewards (GRPO), over a synthetic arithmetic world a program checks.

    arith.py      problems (addition, multiplication, word problems), the two formats, the verifier
    tiny.py       a small decoder (attention-only or with MLPs) that can return its attention patterns
    induction.py  repeated-span data, in-context loss, prefix-matching and copying scores (Olsson et al. 2022)
    sft.py        the masked next-token loss and a pure supervised step
    sample.py     batched sampling of completions with their log-probabilities (one compile)
    grpo.py       group-relative advantages, the clipped objective with the k3 KL, a pure GRPO step
"""
