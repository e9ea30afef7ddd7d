"""The batched training step as one CUDA graph (``train.cuda_graphs``).

A batched step is thousands of small kernels — the UNet's forward and backward with a LoRA branch in
every attention projection, the per-style losses, the per-slot gradient clipping, the optimizer — and in
eager mode the host launches them one by one from Python, so the GPU waits on the host for part of every
step. :class:`StepGraph` records the whole step once (after the first steps ran eagerly, so cuDNN has
chosen its algorithms and the optimizer has its state) and then replays it: one launch per step. The
step's inputs (noisy latents, timesteps, targets, prompt embeddings or token ids) are copied into the
graph's own buffers before each replay; the learning rate is a tensor on the device that the LR schedule
fills (the captured optimizer reads it there). The kernels are the same as the eager step's, so the
arithmetic is too; a graph is used only while every style of the pass is live (a style that diverges
changes the batch's shape: the pass goes on eagerly). If capturing fails, the pass goes on eagerly with
one warning.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before capturing (cuDNN autotuning, optimizer state, compiled code)


def wanted(spec, device: torch.device) -> bool:
    """Whether a batched pass records its step as a CUDA graph: ``train.cuda_graphs`` (null = on CUDA),
    never on CPU nor with a ``train.compile_mode`` that makes CUDA graphs itself."""
    want = spec.train.cuda_graphs
    if device.type != "cuda" or want is False:
        return False
    if spec.train.compile_mode in ("reduce-overhead", "max-autotune"):
        if want:
            log.warning(
                "train.cuda_graphs=true: not with train.compile_mode=%s, which records CUDA graphs of "
                "the UNet itself; the step runs without a graph of its own",
                spec.train.compile_mode,
            )
        return False
    return True


class StepGraph:
    """``step(**inputs)`` recorded as a CUDA graph on its first call, replayed on every later call.

    ``step`` must read nothing but its tensor arguments and state whose addresses do not change (the
    parameters, their gradients, the optimizer's state, the learning-rate tensor), and return a tensor
    (the per-style losses), which each replay overwrites."""

    def __init__(self, step: Callable[..., torch.Tensor]):
        self.step = step
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: dict = {}
        self.output: Optional[torch.Tensor] = None

    @property
    def recorded(self) -> bool:
        """Whether the step is recorded (an exception from a call that was not is the capture's own)."""
        return self.graph is not None

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self._capture(inputs)
        else:
            for k, v in inputs.items():
                self.inputs[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self.output

    def _capture(self, inputs: dict) -> None:
        """Record the step. The caller holds no tensor of an earlier step's autograd graph (its gradient
        accumulators would run on the stream they were made on, which breaks the capture). Only this
        thread is checked during the capture: the thread that draws the next step's data may pin memory."""
        self.inputs = {k: v.clone() for k, v in inputs.items()}
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the eager steps' blocks: the graph has a memory pool of its own
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.output = self.step(**self.inputs)
        except Exception:
            self.inputs, self.output = {}, None
            del graph
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            raise
        self.graph = graph
        log.info(
            "the training step is recorded as a CUDA graph after %d eager steps: one launch per step from now on",
            WARMUP_STEPS,
        )


def tensor_lr(groups: list[dict], device: torch.device) -> list[dict]:
    """The optimizer groups with each learning rate as a float32 tensor on the device (read by the
    captured optimizer step; the LR schedule fills it in place). float32, as the fused kernel computes."""
    return [{**g, "lr": torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)} for g in groups]
