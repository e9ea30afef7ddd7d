"""diffusers' ``UNet2DConditionModel`` as a Jittor module, for Stable Diffusion's configurations
(``CrossAttnDownBlock2D``/``DownBlock2D`` down, ``UNetMidBlock2DCrossAttn``, ``UpBlock2D``/``CrossAttnUpBlock2D``
up; positional timestep embedding; linear or convolutional transformer projections). It reads the same
``config.json`` and its parameters carry diffusers' names; anything else in the config is refused by name."""

from __future__ import annotations

from .layers import (
    ACTIVATIONS,
    Downsample2D,
    GroupNorm,
    ResnetBlock2D,
    Transformer2DModel,
    Upsample2D,
    jt,
    nn,
    timestep_embedding,
)

SUPPORTED = {
    "down": {"CrossAttnDownBlock2D", "DownBlock2D"},
    "up": {"CrossAttnUpBlock2D", "UpBlock2D"},
    "mid": {"UNetMidBlock2DCrossAttn", None},
}
# config keys whose non-default values this implementation does not carry
MUST_BE = {
    "addition_embed_type": None,
    "class_embed_type": None,
    "encoder_hid_dim": None,
    "time_cond_proj_dim": None,
    "center_input_sample": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "resnet_out_scale_factor": 1.0,
}


def _per_block(v, n):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


class _Block(nn.Module):
    def __init__(
        self,
        cin,
        cout,
        temb,
        layers,
        attn,
        heads,
        cross,
        groups,
        eps,
        linear,
        tlayers,
        down=False,
        up=False,
        prev=None,
        skip=None,
        pad=1,
    ):
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(layers):
            if prev is None:  # down block
                rin = cin if i == 0 else cout
            else:  # up block: the previous block's output, concatenated with a skip connection
                rin = (prev if i == 0 else cout) + (cin if i == layers - 1 else cout)
            self.resnets.append(ResnetBlock2D(rin, cout, temb, groups, eps))
        self.attentions = (
            nn.ModuleList(
                [Transformer2DModel(heads, cout // heads, cout, cross, groups, linear, tlayers) for _ in range(layers)]
            )
            if attn
            else None
        )
        self.downsamplers = nn.ModuleList([Downsample2D(cout, pad)]) if down else None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if up else None

    def down(self, x, temb, ctx):
        states = []
        for i, r in enumerate(self.resnets):
            x = r(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states

    def up(self, x, skips, temb, ctx):
        for i, r in enumerate(self.resnets):
            x = r(jt.concat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _Mid(nn.Module):
    def __init__(self, ch, temb, heads, cross, groups, eps, linear, tlayers):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(ch, ch, temb, groups, eps), ResnetBlock2D(ch, ch, temb, groups, eps)]
        )
        self.attentions = nn.ModuleList([Transformer2DModel(heads, ch // heads, ch, cross, groups, linear, tlayers)])

    def execute(self, x, temb, ctx):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, ctx), temb)


class _TimestepEmbedding(nn.Module):
    def __init__(self, cin, dim, act):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def execute(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def check_config(conf: dict) -> None:
    from ...errors import ConfigError

    for k, v in MUST_BE.items():
        if conf.get(k, v) != v:
            raise ConfigError(f"unet config {k}={conf[k]!r}: not carried by the jittor backend's UNet")
    for kind, key in (("down", "down_block_types"), ("up", "up_block_types")):
        for b in conf[key]:
            if b not in SUPPORTED[kind]:
                raise ConfigError(f"unet config {key}: {b} is not carried by the jittor backend's UNet")
    if conf.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in SUPPORTED["mid"]:
        raise ConfigError(f"unet config mid_block_type={conf['mid_block_type']}: not carried by the jittor backend")


class UNet2DConditionModel(nn.Module):
    def __init__(self, conf: dict):
        super().__init__()
        check_config(conf)
        self.config = conf
        boc = list(conf["block_out_channels"])
        n = len(boc)
        groups, eps = conf.get("norm_num_groups", 32), conf.get("norm_eps", 1e-5)
        cross = conf["cross_attention_dim"]
        linear = bool(conf.get("use_linear_projection", False))
        heads = _per_block(conf.get("num_attention_heads") or conf.get("attention_head_dim", 8), n)
        tlayers = _per_block(conf.get("transformer_layers_per_block", 1), n)
        layers = _per_block(conf.get("layers_per_block", 2), n)
        act = conf.get("act_fn", "silu")
        self.act = ACTIVATIONS[act]
        temb = boc[0] * 4
        self.flip, self.shift, self.tdim = conf.get("flip_sin_to_cos", True), conf.get("freq_shift", 0), boc[0]
        self.conv_in = nn.Conv2d(conf["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = _TimestepEmbedding(boc[0], temb, act)
        self.down_blocks = nn.ModuleList()
        out = boc[0]
        for i, kind in enumerate(conf["down_block_types"]):
            cin, out = out, boc[i]
            self.down_blocks.append(
                _Block(
                    cin,
                    out,
                    temb,
                    layers[i],
                    kind.startswith("CrossAttn"),
                    heads[i],
                    cross,
                    groups,
                    eps,
                    linear,
                    tlayers[i],
                    down=i < n - 1,
                    pad=conf.get("downsample_padding", 1),
                )
            )
        self.mid_block = (
            _Mid(boc[-1], temb, heads[-1], cross, groups, eps, linear, tlayers[-1])
            if conf.get("mid_block_type", "UNetMidBlock2DCrossAttn")
            else None
        )
        rboc, rheads, rlayers, rtl = boc[::-1], heads[::-1], layers[::-1], tlayers[::-1]
        self.up_blocks = nn.ModuleList()
        out = rboc[0]
        for i, kind in enumerate(conf["up_block_types"]):
            prev, out, cin = out, rboc[i], rboc[min(i + 1, n - 1)]
            self.up_blocks.append(
                _Block(
                    cin,
                    out,
                    temb,
                    rlayers[i] + 1,
                    kind.startswith("CrossAttn"),
                    rheads[i],
                    cross,
                    groups,
                    eps,
                    linear,
                    rtl[i],
                    up=i < n - 1,
                    prev=prev,
                )
            )
        self.conv_norm_out = GroupNorm(groups, boc[0], eps)
        self.conv_out = nn.Conv2d(boc[0], conf["out_channels"], 3, padding=1)

    def execute(self, sample, timesteps, context):
        t = timesteps if timesteps.ndim else timesteps.reshape((1,))
        if t.shape[0] != sample.shape[0]:
            t = t.broadcast((sample.shape[0],))
        temb = self.time_embedding(timestep_embedding(t, self.tdim, self.flip, self.shift))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, states = block.down(x, temb, context)
            skips += states
        if self.mid_block is not None:
            x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            x = block.up(x, skips, temb, context)
        return self.conv_out(self.act(self.conv_norm_out(x)))
