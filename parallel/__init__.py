"""Meshes, sharding rules and introspection. Knows logical axis names only, never models."""
from parallel.mesh import MESH_AXES, MeshError, make_mesh, resolve_mesh_shape
from parallel.rules import (DATA_PARALLEL, EXPERT, SEQUENCE, TENSOR, ZERO, Strategy, axis_rules, check_batch,
                            check_divisible, check_rules, logical_to_sharding, spec_for, strategy_for)

__all__ = ["MESH_AXES", "MeshError", "make_mesh", "resolve_mesh_shape", "DATA_PARALLEL", "EXPERT", "SEQUENCE",
           "TENSOR", "ZERO", "Strategy", "axis_rules", "check_batch", "check_divisible", "check_rules",
           "logical_to_sharding", "spec_for", "strategy_for"]
