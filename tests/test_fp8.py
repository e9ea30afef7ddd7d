"""train.fp8 (stylexfer/backends/torch/fp8.py): which layers are swapped, that they are put back untouched,
and (on a GPU with fp8 units) that the fp8 product and its input gradient stay close to bf16's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stylexfer.backends.torch import fp8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(320, 320, bias=False)
        self.ff = nn.Linear(320, 1280)
        self.small = nn.Linear(32, 32)  # too small to gain: stays
        self.odd = nn.Linear(320, 330)  # not a multiple of 16: stays
        self.conv = nn.Conv2d(4, 4, 3)
        self.trained = nn.Linear(320, 320)  # trainable: stays
        for m in (self.to_q, self.ff, self.small, self.odd, self.conv):
            m.requires_grad_(False)

    def forward(self, x):
        return self.ff(self.to_q(x)).sum() + self.trained(x).sum()


def test_fp8_swaps_frozen_linears_only_and_puts_them_back():
    torch.manual_seed(0)
    m = nn.ModuleList([Block(), Block()])
    before = {n: type(mod) for n, mod in m.named_modules()}
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 5, 320)
    ref = m[0](x) + m[1](x)
    with fp8.fp8_linears(m) as n:
        assert n == 4  # to_q and ff of each block
        assert type(m[0].to_q) is fp8.Fp8Linear and type(m[1].ff) is fp8.Fp8Linear
        assert type(m[0].small) is nn.Linear and type(m[0].odd) is nn.Linear and type(m[0].trained) is nn.Linear
        assert m[0].to_q.weight is m[0].to_q.linear.weight and m[0].to_q.in_features == 320
        assert torch.equal(
            m[0](x) + m[1](x), ref
        )  # float32 (CPU): the plain product, fp8 is for bf16/fp16 activations
    assert {n: type(mod) for n, mod in m.named_modules()} == before
    assert all(torch.equal(v, weights[k]) for k, v in m.state_dict().items())
    with fp8.fp8_linears(m, on=False) as n:
        assert n == 0 and type(m[0].to_q) is nn.Linear


def test_fp8_is_off_where_there_are_no_fp8_units():
    assert not fp8.supported(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and fp8.supported(torch.device("cuda"))),
    reason="needs a CUDA GPU with fp8 units (compute capability >= 8.9)",
)
def test_fp8_product_and_input_gradient_are_close_to_bf16():
    torch.manual_seed(0)
    lin = nn.Linear(640, 1280).cuda().to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(4, 256, 640, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ref = lin(x)
    (gref,) = torch.autograd.grad(ref.float().square().sum(), x)
    f = fp8.Fp8Linear(lin)
    y = f(x)
    (g,) = torch.autograd.grad(y.float().square().sum(), x)
    rel = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < 0.05, rel  # e4m3 keeps 3 mantissa bits: a few percent on random data
    assert ((g.float() - gref.float()).norm() / gref.float().norm()).item() < 0.05
