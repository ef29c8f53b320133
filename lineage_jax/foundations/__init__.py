"""Before the Transformer: the foundations chapter's reusable pieces, as pure functions.

``mlp``        a multi-layer perceptron with its backward pass written out by hand (Rumelhart et al. 1986)
``tape``       a tiny reverse-mode automatic differentiation: a tape of primitives (Linnainmaa 1970)
``gradcheck``  central finite differences and the relative error between gradients
``dropout``    inverted dropout and the per-step, per-device key (Srivastava et al. 2014)
``batchnorm``  batch normalisation's formula, its running statistics in both conventions, across replicas
               (Ioffe & Szegedy 2015)
``tasks``      synthetic tasks needing no download: a random teacher's labels (with training-label noise),
               random labels
``alexnet``    local response normalisation, overlapping pooling, the two-GPU split as grouped convolutions and
               as a 2-device ``shard_map`` (Krizhevsky et al. 2012)
``gradstats``  activation gradients, their per-layer norms and their magnitudes against a float format's
               range (Glorot & Bengio 2010; Micikevicius et al. 2018)
``lstm``       the LSTM cell in torch's gate order, a sequence as a ``lax.scan`` (masked, either direction),
               the bidirectional encoder (Hochreiter & Schmidhuber 1997; Bahdanau et al. 2015)
``seq2seq``    Sutskever et al. 2014's deep LSTM encoder–decoder, the source read reversed by a masked scan
``nets``       the MLP and the AlexNet-shaped CNN as Flax linen modules, every parameter with logical axis names

Each is proved against its peer (``jax.grad``, ``flax.linen``, ``torch``) in ``tests/foundations/``; the
lessons in ``lineage_jax/lessons/`` (``backprop``, ``relu``, ``dropout``, ``batchnorm``,
``mixed_precision``, ``alexnet``, ``seq2seq_attention``, ``seq2seq_reverse``) measure the papers' claims with them.
"""
