"""The papers' per-device numbers a compiled program is checked against: ZeRO's model-state
bytes per stage, ring-collective traffic per stage, and GShard's all-to-all traffic.
"""
from __future__ import annotations


def zero_theory_bytes(n_params: int, stage: int, n_shards: int, param_bytes: int = 4, grad_bytes: int = 4,
                      opt_bytes_per_param: int = 8) -> dict:
    """Per-device model-state bytes under ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory
    Optimizations Toward Training Trillion Parameter Models", §5), with Ψ = ``n_params``,
    N = ``n_shards`` (data-parallel degree), parameters of ``param_bytes``, gradients of
    ``grad_bytes`` and K = ``opt_bytes_per_param`` bytes of optimizer state per parameter:

    ========  ==============  ==============  ==============  =============================
    stage     params          grads           opt_state       paper (2-byte p, g)
    ========  ==============  ==============  ==============  =============================
    0 (DP)    p·Ψ             g·Ψ             K·Ψ             (2 + 2 + K)·Ψ
    1 P_os    p·Ψ             g·Ψ             K·Ψ/N           2Ψ + 2Ψ + K·Ψ/N
    2 P_os+g  p·Ψ             g·Ψ/N           K·Ψ/N           2Ψ + (2 + K)·Ψ/N
    3 P_os+g+p  p·Ψ/N         g·Ψ/N           K·Ψ/N           (2 + 2 + K)·Ψ/N
    ========  ==============  ==============  ==============  =============================

    K = 8 for Adam with f32 params (f32 m and v); K = 12 in the paper's mixed-precision setting
    (f32 master copy + m + v beside bf16/fp16 params and grads, p = g = 2). A sharded quantity
    takes ⌈Ψ/N⌉ elements per device. Activations and temporaries are not model state and are
    not included. Returns ``params``, ``grads``, ``opt_state`` and ``total`` in bytes.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    shard = -(-n_params // n_shards)
    out = {"params": (shard if stage >= 3 else n_params) * param_bytes,
           "grads": (shard if stage >= 2 else n_params) * grad_bytes,
           "opt_state": (shard if stage >= 1 else n_params) * opt_bytes_per_param}
    out["total"] = out["params"] + out["grads"] + out["opt_state"]
    return out


def comm_theory_bytes(param_bytes_total: int, stage: int, n: int) -> dict:
    """Bytes each device *sends* per training step for the data-parallel gradient / parameter
    traffic of ZeRO ``stage`` over ``n`` devices, with bandwidth-optimal (ring) collectives on
    P = ``param_bytes_total`` bytes of parameters (= gradient bytes): an all-gather or a
    reduce-scatter of P costs P·(n−1)/n per device, an all-reduce (= reduce-scatter +
    all-gather) 2·P·(n−1)/n (JAX scaling book; ZeRO paper §7):

    ========  ===================================================  ===============
    stage     collectives                                          total
    ========  ===================================================  ===============
    0 (DP)    all-reduce of the gradients                          2·P·(n−1)/n
    1, 2      reduce-scatter gradients + all-gather updated params  2·P·(n−1)/n
    3         all-gather params in forward and again in backward,  3·P·(n−1)/n
              reduce-scatter gradients
    ========  ===================================================  ===============

    Returns ``all-reduce``, ``reduce-scatter``, ``all-gather`` and ``total`` (ints, bytes).
    Compare with the ``sent_bytes`` of ``collectives``, which uses the same convention.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    one = param_bytes_total * (n - 1) // n if n > 1 else 0
    ar, rs, ag = (2 * one, 0, 0) if stage == 0 else (0, one, one) if stage in (1, 2) else (0, one, 2 * one)
    return {"all-reduce": ar, "reduce-scatter": rs, "all-gather": ag, "total": ar + rs + ag}


def expert_comm_theory_bytes(groups: int, experts: int, capacity: int, width: int, n: int, *,
                             moe_layers: int = 1, dtype_bytes: int = 4, passes: int = 4) -> int:
    """Bytes each device sends per step for GShard expert parallelism over ``n`` devices.

    Each MoE layer moves its dispatch buffer [G, E, C, D] (G token groups on this device, E
    experts, C capacity slots, D width) to the experts' devices and the outputs back: two
    all-to-alls forward and, transposed, two backward (``passes = 4`` per layer per
    micro-batch). An all-to-all keeps 1/n of the buffer and sends the rest:

        sent = passes · moe_layers · G·E·C·D·bytes · (n−1)/n

    It does not depend on the number of parameters: expert parallelism trades the parameter
    traffic of data parallelism for activation traffic.
    """
    if n <= 1:
        return 0
    return passes * moe_layers * groups * experts * capacity * width * dtype_bytes * (n - 1) // n
