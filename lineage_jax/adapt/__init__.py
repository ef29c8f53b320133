"""Parameter-efficient adaptation as pure transforms on the parameter pytree (no model knows of it):

    lora   LoRA adapters (Hu et al. 2021): select kernels, init (A random, B = 0), merge / unmerge
    nf4    the 4-bit NormalFloat code book, block-wise absmax, double quantisation, packing (QLoRA)
    quant  quantised kernels as pytree leaves (nf4, int8, int4) and the dequantise-on-the-fly matmul
    store  a fine-tuning run's adapter.json and standalone adapter files (safetensors)
"""
