"""Published accelerator figures the planner's roofline uses, each with its source.

Per chip: dense bf16 peak FLOP/s, HBM capacity and bandwidth, the one-way bandwidth of the fast
interconnect one mesh axis can use (ICI: a bidirectional ring over 2 links of one torus axis;
NVLink: the GPU's per-direction NVLink bandwidth), the slow network across slices / nodes
(DCN, InfiniBand) per chip, and how many chips share the fast one (a slice / a node).

Numbers are vendor peaks; the planner reports MFU against them and states what it assumes.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    flops: float          # dense bf16 FLOP/s
    hbm_bytes: float
    hbm_bw: float         # bytes/s
    ici_bw: float         # bytes/s one way, per chip, along one mesh axis (fast links)
    dcn_bw: float         # bytes/s per chip across slices / nodes
    slice_chips: int      # chips joined by the fast links (TPU slice / GPU node)
    source: str


GB = 1e9
CHIPS: dict[str, Chip] = {c.name: c for c in [
    Chip("v4", 275e12, 32 * 2**30, 1.2e12, 2 * 4.5e10, 6.25e9, 4096,
         "cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB, 1.2 TB/s); ICI 4.5e10 B/s per link one way and "
         "DCN per chip from the JAX scaling book, 'How to Think About TPUs' (2025)"),
    Chip("v5e", 197e12, 16 * GB, 8.1e11, 2 * 4.5e10, 6.25e9, 256,
         "cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s, 256-chip pods); ICI per link "
         "and DCN from the JAX scaling book"),
    Chip("v5p", 459e12, 96 * GB, 2.765e12, 2 * 9e10, 6.25e9, 8960,
         "cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GB HBM, 2765 GB/s, 8960-chip pods); ICI 9e10 B/s "
         "per link one way and DCN from the JAX scaling book"),
    Chip("v6e", 918e12, 32 * GB, 1.64e12, 2 * 9e10, 6.25e9, 256,
         "cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB, 1640 GB/s, 256-chip pods); ICI per link and "
         "DCN from the JAX scaling book"),
    Chip("h100", 989e12, 80 * GB, 3.35e12, 450 * GB, 50 * GB, 8,
         "NVIDIA H100 SXM datasheet (989 TFLOP/s dense bf16, 80 GB HBM3, 3.35 TB/s, NVLink 900 GB/s both ways); "
         "InfiniBand NDR 400 Gb/s per GPU (DGX H100)"),
    Chip("a100", 312e12, 80 * GB, 2.039e12, 300 * GB, 25 * GB, 8,
         "NVIDIA A100 SXM 80GB datasheet (312 TFLOP/s bf16, 2.039 TB/s, NVLink 600 GB/s both ways); "
         "InfiniBand HDR 200 Gb/s per GPU (DGX A100)"),
]}
