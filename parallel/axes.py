"""The declared vocabulary of logical axis names: every name a model may put on a parameter
or an activation, with what it means (named dimensions, as in Mesh-TensorFlow, Shazeer et al. 2018).

A strategy maps each of these to mesh axes (``parallel/rules.py``); a name outside this list
is an error, never a silently replicated axis.
"""
from __future__ import annotations

import difflib
from typing import Iterable

from parallel.mesh import MeshError

LOGICAL_AXES: dict[str, str] = {
    "batch": "examples of a batch (sequences); split by data parallelism",
    "seq": "time on the residual stream, between blocks; split by sequence parallelism",
    "length": "time inside attention and the MLP (gathered under sequence parallelism)",
    "embed": "the model width D; split at rest by ZeRO",
    "vocab": "token vocabulary V (embedding rows, logits); split by Megatron tensor parallelism",
    "heads": "attention heads H; split by Megatron tensor parallelism",
    "kv": "width K of one attention head",
    "mlp": "the FFN's hidden width F; split by Megatron tensor parallelism",
    "position": "rows of a learned position table",
    "token_type": "rows of BERT's segment (token type) embedding",
    "relpos_buckets": "T5's relative-position buckets",
    "layers": "the stacked layers of a scanned block",
    "expert": "the experts of a mixture-of-experts layer; split by GShard expert parallelism",
    "expert_group": "token groups once dispatched to their experts",
    "route": "the router's expert axis: every device routes its own tokens over all experts",
}


class AxisNameError(MeshError):
    """A logical axis name that is not in ``LOGICAL_AXES``."""


def unknown_name(name, what: str) -> AxisNameError:
    """The one-line error for ``name`` on ``what``: the nearest known name, and all of them."""
    near = difflib.get_close_matches(str(name), LOGICAL_AXES, n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return AxisNameError(f"{what}: unknown logical axis {name!r}; {hint}known: {', '.join(LOGICAL_AXES)} "
                         f"(parallel/axes.py)")


def check_names(names: Iterable, what: str) -> None:
    """Every name (None aside: an unnamed, replicated dimension) must be in the vocabulary."""
    for name in names:
        if name is not None and name not in LOGICAL_AXES:
            raise unknown_name(name, what)
