"""Mixture of experts: routers (Shazeer 2017, GShard, Switch/ST-MoE), dispatch backends, the layer."""
from lineage_jax.moe.dispatch import BACKENDS, capacity_ffn, dispatch_tensors, dropless_ffn, moe_ffn
from lineage_jax.moe.layer import MoEFeedForward, Router
from lineage_jax.moe.routers import (ROUTERS, Routing, capacity, cv_squared, gshard_route,
                                     positions_in_expert, shazeer_route, switch_route)

__all__ = ["BACKENDS", "ROUTERS", "MoEFeedForward", "Router", "Routing", "capacity", "capacity_ffn",
           "cv_squared", "dispatch_tensors", "dropless_ffn", "gshard_route", "moe_ffn",
           "positions_in_expert", "shazeer_route", "switch_route"]
