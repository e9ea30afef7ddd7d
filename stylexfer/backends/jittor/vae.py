"""diffusers' ``AutoencoderKL`` (the KL VAE of Stable Diffusion) as a Jittor module with diffusers' parameter
names: an encoder to a diagonal Gaussian posterior over the latents, and a decoder back to pixels."""

from __future__ import annotations

from .layers import ACTIVATIONS, Attention, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D, jt, nn


class _Mid(nn.Module):
    def __init__(self, ch, groups, attn: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(ch, ch, None, groups, 1e-6), ResnetBlock2D(ch, ch, None, groups, 1e-6)]
        )
        self.attentions = (
            nn.ModuleList([Attention(ch, 1, ch, bias=True, norm_groups=groups, eps=1e-6, residual=True)])
            if attn
            else None
        )

    def execute(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class _Block(nn.Module):
    def __init__(self, cin, cout, layers, groups, down=False, up=False):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, None, groups, 1e-6) for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(cout, padding=0)]) if down else None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if up else None

    def execute(self, x):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _Encoder(nn.Module):
    def __init__(self, conf):
        super().__init__()
        boc, groups, n = conf["block_out_channels"], conf.get("norm_num_groups", 32), len(conf["block_out_channels"])
        layers, self.act = conf.get("layers_per_block", 1), ACTIVATIONS[conf.get("act_fn", "silu")]
        self.conv_in = nn.Conv2d(conf.get("in_channels", 3), boc[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [_Block(boc[max(i - 1, 0)], boc[i], layers, groups, down=i < n - 1) for i in range(n)]
        )
        self.mid_block = _Mid(boc[-1], groups, conf.get("mid_block_add_attention", True))
        self.conv_norm_out = GroupNorm(groups, boc[-1], 1e-6)
        self.conv_out = nn.Conv2d(boc[-1], 2 * conf["latent_channels"], 3, padding=1)

    def execute(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        return self.conv_out(self.act(self.conv_norm_out(self.mid_block(x))))


class _Decoder(nn.Module):
    def __init__(self, conf):
        super().__init__()
        boc, groups, n = conf["block_out_channels"], conf.get("norm_num_groups", 32), len(conf["block_out_channels"])
        layers, self.act = conf.get("layers_per_block", 1), ACTIVATIONS[conf.get("act_fn", "silu")]
        r = boc[::-1]
        self.conv_in = nn.Conv2d(conf["latent_channels"], r[0], 3, padding=1)
        self.mid_block = _Mid(r[0], groups, conf.get("mid_block_add_attention", True))
        self.up_blocks = nn.ModuleList(
            [_Block(r[max(i - 1, 0)], r[i], layers + 1, groups, up=i < n - 1) for i in range(n)]
        )
        self.conv_norm_out = GroupNorm(groups, boc[0], 1e-6)
        self.conv_out = nn.Conv2d(boc[0], conf.get("out_channels", 3), 3, padding=1)

    def execute(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(self.act(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, conf: dict):
        super().__init__()
        from ...errors import ConfigError

        for key, kinds in (("down_block_types", {"DownEncoderBlock2D"}), ("up_block_types", {"UpDecoderBlock2D"})):
            if set(conf.get(key, kinds)) - kinds:
                raise ConfigError(f"vae config {key}: only {sorted(kinds)[0]} is carried by the jittor backend's VAE")
        self.config = conf
        z = conf["latent_channels"]
        self.encoder = _Encoder(conf)
        self.decoder = _Decoder(conf)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1) if conf.get("use_quant_conv", True) else None
        self.post_quant_conv = nn.Conv2d(z, z, 1) if conf.get("use_post_quant_conv", True) else None

    def encode(self, x):
        """The posterior's mean and standard deviation (log-variance clamped to [-30, 20] as diffusers does)."""
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        z = h.shape[1] // 2
        mean, logvar = h[:, :z], jt.clamp(h[:, z:], -30.0, 20.0)
        return mean, jt.exp(0.5 * logvar)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)
