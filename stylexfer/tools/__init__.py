"""Tools beside the pipeline: ``python -m stylexfer.tools.bench`` (the SD 2.1-shaped speed benchmark),
``python -m stylexfer.tools.bench_backends`` (PyTorch against Jittor), ``python -m stylexfer.tools.convert_weights``
(published metric weights to safetensors). Nothing in the pipeline imports them."""
