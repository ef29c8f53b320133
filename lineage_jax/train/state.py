"""The training state: a plain pytree, so it jits, shards and checkpoints as one value."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array      # number of optimizer updates applied so far (int32 scalar)
    params: Any          # plain pytree of arrays (unboxed from Flax's logical metadata)
    opt_state: Any       # Optax state
