"""The shard report: what a compiled program really does per device, beside the papers' formulas.

    hlo          optimized HLO text parsed: instructions, loops, element types; ``dots_by_op``
    collectives  every collective: kind, bytes, bytes sent, replica groups, trip counts
    memory       a compiled program's memory analysis; bytes of each parameter under its sharding
    theory       ZeRO's model-state bytes, ring and all-to-all traffic per device
    build        ``ReportInputs`` -> ``build_report`` (plain data); ``comparison_row``
    format       the report as text
    plot         strategies side by side (PNG)

Import the module you need (``from parallel.report import collectives``); nothing is re-exported.
"""
