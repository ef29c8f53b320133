"""Meshes, logical axis names, sharding rules, named strategies. Knows logical axis names only, never models."""
from parallel.axes import LOGICAL_AXES, AxisNameError, check_names
from parallel.mesh import MESH_AXES, MeshError, make_mesh, resolve_mesh_shape
from parallel.rules import (DATA_PARALLEL, EXPERT, SEQUENCE, TENSOR, ZERO_AXES, Strategy, axis_rules, check_batch,
                            check_divisible, check_rules, complete, logical_to_sharding, spec_for, strategy_for)

__all__ = ["LOGICAL_AXES", "AxisNameError", "check_names", "MESH_AXES", "MeshError", "make_mesh",
           "resolve_mesh_shape", "DATA_PARALLEL", "EXPERT", "SEQUENCE", "TENSOR", "ZERO_AXES", "Strategy", "axis_rules",
           "check_batch", "check_divisible", "check_rules", "complete", "logical_to_sharding", "spec_for",
           "strategy_for"]
