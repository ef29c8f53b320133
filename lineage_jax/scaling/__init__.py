"""Scaling laws (Kaplan et al. 2020; Hoffmann et al. 2022): counting, the laws, their fits, a sweep.

- ``count``: total, non-embedding (Kaplan's N), active and matmul parameters; training FLOPs as
  6·N·D and in the PaLM form with attention.
- ``laws``: Kaplan's power laws and Chinchilla's parametric loss as pure functions, the published
  constants as named presets (``kaplan``, ``chinchilla``, ``epoch``), compute-optimal allocation.
- ``fit``: Chinchilla's three approaches (training-curve envelope, IsoFLOP parabolas, the
  parametric Huber fit) with bootstrap intervals; ``plots`` draws them.
- ``sweep``: an IsoFLOP grid of small GPTs trained here through the normal train loop.
"""
