"""The training state: a plain pytree, so it jits, shards and checkpoints as one value."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax

from parallel.precision import LossScale


@flax.struct.dataclass
class TrainState:
    step: jax.Array      # number of optimizer updates applied so far (int32 scalar)
    params: Any          # plain pytree of arrays (unboxed from Flax's logical metadata)
    opt_state: Any       # Optax state
    loss_scale: LossScale  # fp16 dynamic loss scale; a static 1.0 otherwise
