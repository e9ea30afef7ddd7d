"""The pocket base model's pretraining script (stylexfer/world/pretrain.py) at toy scale on the CPU: the data
does not depend on the number of worker processes, and the result is a diffusers folder that loads through
the same path as SD 2.1, with a record whose hashes match its files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from stylexfer.world.pretrain import PretrainConfig, pretrain, render_set


def test_the_rendered_set_is_the_same_with_any_number_of_workers():
    a, pa = render_set(700, 3, 32, workers=1)
    b, pb = render_set(700, 3, 32, workers=2)
    assert a.shape == (700, 32, 32, 3) and np.array_equal(a, b) and pa == pb
    assert (
        all(p.startswith("an image of ") for p in pa) and any("," in p for p in pa) and any("," not in p for p in pa)
    )


@pytest.mark.slow
def test_pretraining_writes_a_loadable_model_with_its_record(tmp_path, cache_dir):
    from stylexfer.backends.torch.models import load_components
    from stylexfer.models import resolve_model

    out = tmp_path / "pocket"
    cfg = PretrainConfig(
        images=64, vae_steps=3, vae_batch=8, vae_every_style_images=16, unet_steps=4, unet_batch=8, workers=1
    )
    rec = pretrain(out, cfg, "cpu")
    assert len(rec["vae_losses"]) == 3 and len(rec["unet_losses"]) == 4 and rec["random_weights"] is False
    assert set(rec["vae_reconstruction_mse"]) == {"base", "held_out"}
    for name, digest in rec["weights_sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert set(rec["weights_sha256"]) >= {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    }
    assert json.loads((out / "pocket.json").read_text())["data_sha256"] == rec["data_sha256"]
    assert Image.open(out / "samples.png").size == (14 * 64, 3 * 64) and Image.open(out / "loss.png").size[0] > 0
    mc = OmegaConf.create(
        {
            "path": str(out),
            "revision": None,
            "variant": None,
            "local_files_only": True,
            "device": "cpu",
            "dtype": "float32",
        }
    )
    c = load_components(resolve_model(mc, cache_dir), mc)  # the SD 2.1 path
    assert c.unet.config.sample_size == 16 and c.vae.config.scaling_factor > 0
