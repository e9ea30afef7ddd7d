"""transformers' ``CLIPTextModel`` as a Jittor module (pre-LayerNorm transformer, causal mask, final LayerNorm)
with transformers' parameter names; the output is the last hidden state, what Stable Diffusion conditions on."""

from __future__ import annotations

import numpy as np

from .layers import ACTIVATIONS, LayerNorm, attention, jt, nn


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def execute(self, x, mask):
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask))


class _MLP(nn.Module):
    def __init__(self, dim, inner, act):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.fc1, self.fc2 = nn.Linear(dim, inner), nn.Linear(inner, dim)

    def execute(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, conf):
        super().__init__()
        d, eps = conf["hidden_size"], conf.get("layer_norm_eps", 1e-5)
        self.self_attn = _Attention(d, conf["num_attention_heads"])
        self.layer_norm1 = LayerNorm(d, eps)
        self.mlp = _MLP(d, conf["intermediate_size"], conf.get("hidden_act", "quick_gelu"))
        self.layer_norm2 = LayerNorm(d, eps)

    def execute(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, conf):
        super().__init__()
        self.token_embedding = nn.Embedding(conf["vocab_size"], conf["hidden_size"])
        self.position_embedding = nn.Embedding(conf["max_position_embeddings"], conf["hidden_size"])

    def execute(self, ids):
        n = ids.shape[1]
        return self.token_embedding(ids) + self.position_embedding(jt.arange(n).int32()).unsqueeze(0)


class _Encoder(nn.Module):
    def __init__(self, conf):
        super().__init__()
        self.layers = nn.ModuleList([_Layer(conf) for _ in range(conf["num_hidden_layers"])])


class CLIPTextModel(nn.Module):
    """Its state-dict keys are those of ``CLIPTextModel.text_model`` (a file's ``text_model.`` prefix is
    stripped when it is loaded)."""

    def __init__(self, conf: dict):
        super().__init__()
        if conf.get("hidden_act", "quick_gelu") not in ACTIVATIONS:
            from ...errors import ConfigError

            raise ConfigError(
                f"text encoder config hidden_act={conf['hidden_act']}: not carried by the jittor backend"
            )
        self.config = conf
        self.embeddings = _Embeddings(conf)
        self.encoder = _Encoder(conf)
        self.final_layer_norm = LayerNorm(conf["hidden_size"], conf.get("layer_norm_eps", 1e-5))

    def execute(self, ids):
        n = ids.shape[1]
        mask = jt.array(np.triu(np.full((n, n), -1e30, np.float32), 1)).reshape((1, n, n))
        x = self.embeddings(ids)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)
