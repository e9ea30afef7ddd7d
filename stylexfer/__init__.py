"""stylexfer: few-shot style-transfer image generation (DreamBooth + LoRA on Stable Diffusion 2.1).

Stages, one module each: :mod:`data` (styles, images, prompts), :mod:`prior` (class images),
:mod:`train` (DreamBooth-LoRA), :mod:`sample` (inference), :mod:`score` (metrics), orchestrated by
:mod:`run` and driven by the Hydra entrypoint in :mod:`main` (``python -m stylexfer``).
"""

__version__ = "0.1.0"
