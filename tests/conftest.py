"""Shared fixtures: one stage store per test session (the tiny model is built once), no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import CONF, REPO, compose, metric_overrides, run_cli  # noqa: F401 - the fixtures below use them

os.environ["HF_HUB_OFFLINE"] = "1"
# jittor's compiled core and kernels (backend=jittor): one place per machine for the session and its CLI
# subprocesses (each test's store is its own; jittor's cache need not be), where a user's runs keep it too
os.environ.setdefault("JITTOR_HOME", str(Path.home() / ".cache" / "stylexfer" / "jittor"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's stage store; STYLEXFER_CACHE points at it so CLI subprocesses share it."""
    path = Path(os.environ.get("STYLEXFER_TEST_CACHE") or tmp_path_factory.mktemp("store"))
    os.environ["STYLEXFER_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> Path:
    from stylexfer.embedded import ensure_tiny_model

    return ensure_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def demo_root(cache_dir) -> Path:
    from stylexfer.embedded import ensure_demo_data

    return ensure_demo_data(cache_dir)


@pytest.fixture
def compose_cfg():
    return compose


@pytest.fixture(scope="session")
def components(tiny_dir, cache_dir):
    """The tiny model's components on CPU in float32 (shared; tests must leave no adapter behind)."""
    from omegaconf import OmegaConf

    from stylexfer.backends.torch.models import load_components
    from stylexfer.models import resolve_model

    mc = OmegaConf.create(
        {
            "path": str(tiny_dir),
            "revision": None,
            "variant": None,
            "local_files_only": True,
            "device": "cpu",
            "dtype": "float32",
        }
    )
    return load_components(resolve_model(mc, cache_dir), mc)


@pytest.fixture(autouse=True)
def _plain_shared_model(request):
    """After a test that used the shared tiny model, put its plain layers back (diffusers' delete_adapters
    leaves emptied peft wrappers behind): each test starts from the model as loaded, whatever ran before."""
    yield
    if "components" in request.fixturenames or "backend" in request.fixturenames:
        from stylexfer.backends.torch.train import remove_adapters

        remove_adapters(request.getfixturevalue("components"))


@pytest.fixture(scope="session")
def backend(components, cache_dir):
    """The PyTorch backend around the shared tiny-model components (what the stages are given)."""
    from stylexfer.backends.torch import TorchBackend

    return TorchBackend.from_components(components, cache_dir)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def metric_models(tmp_path_factory) -> dict:
    """Tiny RANDOM-weight models of every metric's architecture, saved as the real ones are stored:
    DINOv2 and CLIP in the hub layout, LPIPS and the FID Inception as safetensors made by
    ``stylexfer.tools.convert_weights`` from PyTorch pickles (the LPIPS heads are the lpips package's real
    ones; the SqueezeNet and Inception weights are random). For plumbing tests only: no quality."""
    import torchvision
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        Dinov2Config,
        Dinov2Model,
    )

    from stylexfer.embedded import build_tokenizer
    from stylexfer.metrics import fid_structure
    from stylexfer.tools import convert_weights

    root = tmp_path_factory.mktemp("metric_models")
    torch.manual_seed(0)
    dino = Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=56,
            patch_size=14,
        )
    )
    dino.save_pretrained(root / "dino", safe_serialization=True)
    BitImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 56, "width": 56},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(root / "dino")
    tok = build_tokenizer(root / "tok")
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            projection_dim=16,
        )
    )
    clip.save_pretrained(root / "clip", safe_serialization=True)
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    ).save_pretrained(root / "clip")
    torch.save(torchvision.models.squeezenet1_1().state_dict(), root / "squeezenet1_1.pth")
    convert_weights.main(
        ["lpips", "--backbone", str(root / "squeezenet1_1.pth"), "--out", str(root / "lpips.safetensors")]
    )
    torch.save(fid_structure().state_dict(), root / "pt_inception.pth")
    convert_weights.main(["fid", "--src", str(root / "pt_inception.pth"), "--out", str(root / "fid.safetensors")])
    paths = {
        "dino": root / "dino",
        "clip_r": root / "clip",
        "clip_iqa": root / "clip",
        "lpips": root / "lpips.safetensors",
        "fid": root / "fid.safetensors",
    }
    return {k: str(v) for k, v in paths.items()}
