"""``python -m stylexfer.export``: a run's adapters in kohya's layout, checked through a loader nobody here wrote
(diffusers' own reading of non-diffusers LoRA files)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, run_cli
from stylexfer.errors import ConfigError
from stylexfer.export import kohya_name, module_alpha, part_configs, to_kohya

POCKET = str(REPO / "stylexfer/assets/pocket")


def _meta(unet: dict, te: dict | None = None) -> dict:
    doc = {f"unet.{k}": v for k, v in unet.items()} | {f"text_encoder.{k}": v for k, v in (te or {}).items()}
    return {"format": "pt", "lora_adapter_metadata": json.dumps(doc)}


def test_names_alphas_and_dora_scales_in_kohyas_layout():
    a, b = np.ones((4, 8), np.float32), np.full((8, 4), 2.0, np.float32)
    tensors = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.down.weight": a,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.up.weight": b,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight": a,
        "text_encoder.encoder.layers.3.self_attn.q_proj.lora_linear_layer.down.weight": a,
    }
    meta = _meta({"r": 4, "lora_alpha": 16, "alpha_pattern": {"attn2.to_k": 3}}, {"r": 4, "lora_alpha": 2})
    out, kmeta = to_kohya(tensors, meta)
    u = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert np.array_equal(out[f"{u}.lora_down.weight"], a) and np.array_equal(out[f"{u}.lora_up.weight"], b)
    assert out[f"{u}.alpha"].dtype == np.float32 and float(out[f"{u}.alpha"]) == 16.0  # the trained alpha, not r
    assert float(out["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.alpha"]) == 3.0  # pattern
    te = "lora_te_text_model_encoder_layers_3_self_attn_q_proj"  # SD 1/2's one text encoder: lora_te_, not te1
    assert float(out[f"{te}.alpha"]) == 2.0 and f"{te}.lora_down.weight" in out
    assert kmeta["ss_network_dim"] == "4" and kmeta["ss_network_alpha"] == "16"
    # peft's spelling (DoRA adapters): the magnitude becomes dora_scale, on the output axis
    mag = np.arange(8, dtype=np.float32)
    dora = {"unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": a}
    dora["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_magnitude_vector"] = mag
    out, _ = to_kohya(dora, {"unet_config": json.dumps({"r": 4, "lora_alpha": 4}), "stylexfer_peft_kind": "dora"})
    scale = out["lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale"]
    assert scale.shape == (8, 1) and np.array_equal(scale[:, 0], mag)


def test_what_cannot_be_mapped_is_refused_naming_it():
    with pytest.raises(ConfigError, match="a lokr adapter is stored in peft's own keys"):
        to_kohya({}, {"stylexfer_peft_kind": "lokr"})
    with pytest.raises(ConfigError, match=r"^unet\.x\.hada_w1: not a diffusers LoRA key"):
        to_kohya({"unet.x.hada_w1": np.zeros(1)}, _meta({"r": 1, "lora_alpha": 1}))
    with pytest.raises(ConfigError, match="no text_encoder LoRA config"):
        to_kohya({"text_encoder.a.lora.down.weight": np.zeros((1, 1))}, _meta({"r": 1, "lora_alpha": 1}))
    assert (
        kohya_name("text_encoder", "text_model.encoder.layers.0.mlp.fc1")
        == "lora_te_text_model_encoder_layers_0_mlp_fc1"
    )
    assert module_alpha({"lora_alpha": 8, "alpha_pattern": {}}, "a.to_q") == 8.0
    assert part_configs({}) == {}


def _outputs(pipe, ids, x, t):
    import torch

    with torch.no_grad():
        e = pipe.text_encoder(ids)[0]
        return e, pipe.unet(x, t, encoder_hidden_states=e.expand(len(t), -1, -1)).sample


@pytest.mark.slow
def test_the_kohya_file_loads_in_diffusers_to_the_same_networks_as_the_diffusers_file(tmp_path, cache_dir):
    """Trained alpha ≠ rank in both parts (UNet 16 of 32, text encoder 2 of 4), so an alpha written as the rank
    would halve the update; tolerance 1e-6 (observed: 0, the same float32 numbers reach the same layers)."""
    import torch
    from diffusers import StableDiffusionPipeline

    run = tmp_path / "run"
    args = ["train.steps=2", "train.lr=1e-2", "data.max_objects=1", "data.styles=[00]", "prior=none"]
    args += ["scheduler.steps=2", "eval.metrics=[hist]", "lora.unet_alpha=16", "lora.text_encoder_lora_rank=4"]
    args += ["lora.text_encoder_alpha=2", f"hydra.run.dir={run}"]
    assert run_cli(args, tmp_path).returncode == 0
    cmd = [sys.executable, "-m", "stylexfer.export", str(run), "--format", "kohya"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [str(run / "export/kohya/style_00.safetensors")]

    def load(*src, **kw):
        pipe = StableDiffusionPipeline.from_pretrained(POCKET, torch_dtype=torch.float32)
        if src:
            pipe.load_lora_weights(*src, **kw)
        return pipe

    ours, kohya, base = (
        load(str(run / "adapters/00")),
        load(str(run / "export/kohya"), weight_name="style_00.safetensors"),
        load(),
    )
    assert kohya.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}
    ids = ours.tokenizer(["an image of cat in style_00"], padding="max_length", return_tensors="pt").input_ids
    c = ours.unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 700])
    for a, b, z, part in zip(_outputs(ours, ids, x, t), _outputs(kohya, ids, x, t), _outputs(base, ids, x, t), "TU"):
        assert (a - b).abs().max().item() <= 1e-6, part
        assert (a - z).abs().max().item() > 1e-2, part  # the adapter does change the network: the check can fail

    res = subprocess.run([*cmd[:-1], "a1111"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == (
        "error: --format: unknown export format 'a1111' (choose from kohya)"
    )
    res = subprocess.run([*cmd[:3], str(run), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and f"error: {tmp_path}: no adapters/<style>/" in res.stderr
    assert res.stdout == ""  # the first, good run folder was not written again: nothing is written
