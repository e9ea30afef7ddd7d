"""The layers Stable Diffusion's three networks are built from, as Jittor modules whose parameter names are
diffusers' (and transformers'), so that a diffusers safetensors folder loads by name.

Each follows the diffusers (0.42) module of the same name, for the configurations SD 1.x/2.x use:
ResNet blocks with a timestep projection, the spatial transformer (self-attention, cross-attention,
GEGLU feed-forward; linear or 1×1-conv projections), down/up-sampling, and the sinusoidal timestep
embedding. Nothing here has a random initial value that matters: every parameter is loaded.
"""

from __future__ import annotations

import math

from .runtime import loaded

jt = loaded()
nn = jt.nn


def silu(x):
    return x * jt.sigmoid(x)


def gelu(x):
    """The exact (erf) GELU, torch's default."""
    return 0.5 * x * (1.0 + jt.erf(x * (1.0 / math.sqrt(2.0))))


def quick_gelu(x):
    return x * jt.sigmoid(1.702 * x)


ACTIVATIONS = {"silu": silu, "swish": silu, "gelu": gelu, "quick_gelu": quick_gelu}


class GroupNorm(nn.Module):
    """Group normalisation with a two-pass variance, as torch computes it (jittor's own uses
    E[x²] − E[x]², which loses digits on large activations)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = jt.ones(num_channels)
        self.bias = jt.zeros(num_channels)

    def execute(self, x):
        shape = x.shape
        n, c = shape[0], shape[1]
        g = x.reshape((n, self.num_groups, -1))
        mean = g.mean(dim=2, keepdims=True)
        d = g - mean
        var = (d * d).mean(dim=2, keepdims=True)
        y = (d / jt.sqrt(var + self.eps)).reshape(shape)
        bshape = (1, c) + (1,) * (len(shape) - 2)
        return y * self.weight.reshape(bshape) + self.bias.reshape(bshape)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)

    def execute(self, x):
        mean = x.mean(dim=-1, keepdims=True)
        d = x - mean
        var = (d * d).mean(dim=-1, keepdims=True)
        return d / jt.sqrt(var + self.eps) * self.weight + self.bias


def softmax(x):
    """Softmax over the last axis, from jittor's elementwise and reduce ops (``jt.nn.softmax`` compiles a CUDA
    kernel on ``cub::Max``, which CUDA 13's CCCL no longer has)."""
    e = jt.exp(x - x.max(dim=-1, keepdims=True))
    return e / e.sum(dim=-1, keepdims=True)


def attention(q, k, v, heads: int, mask=None):
    """Multi-head scaled dot-product attention over (batch, tokens, heads × dim) inputs."""
    b, n, inner = q.shape
    m = k.shape[1]
    d = inner // heads

    def split(x, length):
        return x.reshape((b, length, heads, d)).transpose((0, 2, 1, 3)).reshape((b * heads, length, d))

    q, k, v = split(q, n), split(k, m), split(v, m)
    scores = nn.bmm_transpose(q, k) * (d**-0.5)
    if mask is not None:
        scores = scores + mask
    probs = softmax(scores)
    out = nn.bmm(probs, v)
    return out.reshape((b, heads, n, d)).transpose((0, 2, 1, 3)).reshape((b, n, inner))


class Attention(nn.Module):
    """diffusers' ``Attention`` (to_q/to_k/to_v/to_out.0): self-attention, or cross-attention on a context;
    with ``group_norm`` and a residual as the VAE's mid-block uses it."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_dim: int | None = None,
        bias: bool = False,
        norm_groups: int | None = None,
        eps: float = 1e-6,
        residual: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.residual = heads, residual
        self.group_norm = GroupNorm(norm_groups, query_dim, eps) if norm_groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Identity()])

    def execute(self, x, context=None):
        spatial = x.ndim == 4
        res = x
        if spatial:
            b, c, h, w = x.shape
        if self.group_norm is not None:
            x = self.group_norm(x)
        if spatial:
            x = x.reshape((b, c, h * w)).transpose((0, 2, 1))
        ctx = x if context is None else context
        out = self.to_out[0](attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads))
        if spatial:
            out = out.transpose((0, 2, 1)).reshape((b, c, h, w))
        return out + res if self.residual else out


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int | None, groups: int, eps: float, act: str = "silu"):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.norm1 = GroupNorm(groups, cin, eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2 = GroupNorm(groups, cout, eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def execute(self, x, temb=None):
        h = self.conv1(self.act(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(self.act(temb)).reshape((h.shape[0], h.shape[1], 1, 1))
        h = self.conv2(self.act(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(nn.Module):
    """Stride-2 3×3 conv; ``padding=0`` pads right and bottom by one first (the VAE's encoder)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def execute(self, x):
        if self.padding == 0:
            x = nn.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def execute(self, x):
        b, c, h, w = x.shape
        x = x.reshape((b, c, h, 1, w, 1)).broadcast((b, c, h, 2, w, 2)).reshape((b, c, 2 * h, 2 * w))
        return self.conv(x)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def execute(self, x):
        h = self.proj(x)
        half = h.shape[-1] // 2
        return h[..., :half] * gelu(h[..., half:])


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def execute(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, cross_dim: int):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_dim=cross_dim)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def execute(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(
        self, heads: int, dim_head: int, channels: int, cross_dim: int, groups: int, linear: bool, layers: int = 1
    ):
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = GroupNorm(groups, channels, 1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_dim) for _ in range(layers)]
        )
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def execute(self, x, context):
        b, c, h, w = x.shape
        res = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        inner = x.shape[1]
        x = x.reshape((b, inner, h * w)).transpose((0, 2, 1))
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = x.transpose((0, 2, 1)).reshape((b, -1, h, w))
        if not self.linear:
            x = self.proj_out(x)
        return x + res


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0):
    """diffusers' ``get_timestep_embedding`` (max period 10000)."""
    half = dim // 2
    exponent = jt.arange(half).float32() * (-math.log(10000.0) / (half - shift))
    args = t.float32().reshape((-1, 1)) * jt.exp(exponent).reshape((1, -1))
    sin, cos = jt.sin(args), jt.cos(args)
    emb = jt.concat([cos, sin], dim=-1) if flip_sin_to_cos else jt.concat([sin, cos], dim=-1)
    if dim % 2:
        emb = nn.pad(emb, (0, 1))
    return emb
