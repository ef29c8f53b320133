"""Lessons: small end-to-end runs that train a model of the lineage on a task the project generates.

    translate   the original encoder-decoder Transformer (Vaswani et al. 2017) on synthetic
                translation (number words -> digits, ISO dates -> written dates);
                ``lineage lesson translate``, ``lineage_jax/lessons/translate.py``

Importing this package does not import JAX (the CLI validates flags first).
"""
TRANSLATE_TASKS: tuple[str, ...] = ("numbers", "dates")
TRANSLATE_STEPS = 1000   # default training steps of `lineage lesson translate`
