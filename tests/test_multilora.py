"""The per-style LoRA layer against peft's LoRA layer (the reference numerics), its bf16 compute mode,
dropout, and the batched pass's refusal of dropout (masks are not per-style reproducible there)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import compose
from stylexfer.backends.torch.multilora import MultiLoraLinear, Router, inject, restore
from stylexfer.specs import TrainSpec


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(12, 10)


def peft_layer(seed: int, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0):
    """A peft LoRA layer on a fixed base, with a non-zero B (a trained-looking adapter)."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = Two()
    torch.manual_seed(seed)
    model = inject_adapter_in_model(
        LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=["to_q"], init_lora_weights="gaussian", lora_dropout=dropout
        ),
        model,
    )
    with torch.no_grad():
        model.to_q.lora_B["default"].weight.normal_(0, 0.3)
    return model


def multi_from(peft_models, rank=4, alpha=8.0, compute=torch.float32, dtype=torch.float32):
    torch.manual_seed(0)
    model = Two().to(dtype)
    router = Router()
    layers = inject(model, ["to_q"], len(peft_models), rank, alpha, router, compute)
    with torch.no_grad():
        for s, pm in enumerate(peft_models):
            layers["to_q"].A[s].copy_(pm.to_q.lora_A["default"].weight)
            layers["to_q"].B[s].copy_(pm.to_q.lora_B["default"].weight)
    return model, layers, router


def test_each_sample_goes_through_its_own_styles_adapter_exactly_as_peft_would():
    refs = [peft_layer(seed) for seed in (1, 2, 3)]
    model, layers, router = multi_from(refs)
    x = torch.randn(6, 5, 12, requires_grad=True)
    # grouped batches (training: equal contiguous runs per style, here styles 2 and 0)
    router.groups = torch.tensor([2, 0])
    got = model.to_q(x)
    want = torch.cat([refs[2].to_q(x[:3]), refs[0].to_q(x[3:])])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # gradients w.r.t. each style's A and B are that style's own gradients
    got.square().sum().backward()
    want.square().sum().backward()
    lay = layers["to_q"]
    for s in (0, 2):
        torch.testing.assert_close(lay.A.grad[s], refs[s].to_q.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lay.B.grad[s], refs[s].to_q.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-5)
    assert lay.A.grad[1].abs().max() == 0  # a style not in the batch gets no gradient
    # any order per sample (sampling), with classifier-free guidance's doubled batch
    router.groups, router.index = None, torch.tensor([1, 0, 1])
    with torch.no_grad():
        got = model.to_q(x.detach())
        want = torch.cat([refs[i].to_q(x[k : k + 1]) for k, i in enumerate([1, 0, 1, 1, 0, 1])])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    router.index = None
    torch.testing.assert_close(model.to_q(x), lay.base(x))  # no routing: the base layer alone


def test_the_lora_branch_runs_in_the_models_dtype_when_asked_and_stays_close_to_float32():
    refs = [peft_layer(1), peft_layer(2)]
    exact, _, r32 = multi_from(refs, dtype=torch.bfloat16)
    fast, layers, r16 = multi_from(refs, compute=torch.bfloat16, dtype=torch.bfloat16)
    r32.groups = r16.groups = torch.tensor([0, 1])
    x = torch.randn(4, 7, 12).to(torch.bfloat16)
    calls = []
    real_bmm, real_baddbmm = torch.bmm, torch.baddbmm

    def spy(name, fn):
        def wrapped(*a, **k):
            calls.append((name, a[1].dtype))
            return fn(*a, **k)

        return wrapped

    torch.bmm, torch.baddbmm = spy("bmm", real_bmm), spy("baddbmm", real_baddbmm)
    try:
        y32 = exact.to_q(x)
        n32 = len(calls)
        y16 = fast.to_q(x)
    finally:
        torch.bmm, torch.baddbmm = real_bmm, real_baddbmm
    assert calls[:n32] == [("bmm", torch.float32), ("bmm", torch.float32)]  # peft's numerics: float32 matmuls
    assert calls[n32:] == [("bmm", torch.bfloat16), ("baddbmm", torch.bfloat16)]  # add folded into the matmul
    assert y16.dtype == y32.dtype == torch.bfloat16
    assert (y16.float() - y32.float()).abs().max() <= 0.05 * y32.float().abs().max()
    y16.float().sum().backward()
    assert layers["to_q"].A.grad.dtype == torch.float32  # the master weights stay float32


def test_lora_dropout_drops_in_training_only():
    refs = [peft_layer(1)]
    model, layers, router = multi_from(refs)
    layers["to_q"].dropout = 0.5
    router.groups = torch.tensor([0])
    x = torch.randn(2, 5, 12)
    model.eval()
    torch.testing.assert_close(model.to_q(x), refs[0].to_q(x), atol=1e-6, rtol=1e-5)
    model.train()
    torch.manual_seed(0)
    a = model.to_q(x)
    assert not torch.allclose(a, refs[0].to_q(x), atol=1e-4)


def test_a_batched_pass_refuses_lora_dropout_and_the_run_trains_one_style_at_a_time(
    components, backend, demo_root, tmp_path, caplog
):
    from stylexfer.backends.torch.trainer import train_styles
    from stylexfer.data import discover_styles
    from stylexfer.train import adapter_spec, train_in_batches

    cfg = compose(["prior=none", "train.steps=2", "lora.dropout=0.1"])
    styles = discover_styles(demo_root, styles=["00", "01"])
    with pytest.raises(ValueError, match=r"lora.dropout > 0"):
        train_styles(
            components, styles, [None, None], TrainSpec.from_config(cfg), None, [tmp_path / "a", tmp_path / "b"]
        )
    assert not any("MultiLora" in type(m).__name__ for m in components.unet.modules())
    with caplog.at_level("INFO"):
        todo = [(s, None, adapter_spec(s, cfg, "tiny", None)) for s in styles]
        assert train_in_batches(backend, todo, cfg, tmp_path, None) == ({}, {})
    assert "lora.dropout=0.1: training the styles one at a time" in caplog.text


def test_restore_puts_the_base_layers_back():
    model = Two()
    base = model.to_q
    layers = inject(model, ["to_q"], 2, 3, 3.0, Router())
    assert isinstance(model.to_q, MultiLoraLinear) and model.to_q.base is base
    restore(model, layers)
    assert model.to_q is base
    with pytest.raises(ValueError, match="no nn.Linear"):
        inject(model, ["to_k"], 2, 3, 3.0, Router())
