"""Lessons: small end-to-end runs, one per chapter of the lineage, each testing one claim of a paper.

The list of lessons is ``lineage_jax.lessons.registry.LESSONS`` (``lineage lesson`` prints it);
the shared training loop, config overrides and result/figure writing are in ``harness``.
Importing this package, the registry or the harness does not import JAX (listing stays cheap).
"""
