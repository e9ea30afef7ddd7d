"""Model cards: the README.md and samples.png beside each adapter of a run folder."""

from __future__ import annotations

import json
import os
import re

import pytest
from PIL import Image

from helpers import run_cli
from stylexfer.card import SCHEDULERS, card_text, hub_id, read_front_matter
from stylexfer.config import SamplerName

TEMPLATE = "an image of {object} in style_{style}"
FAST = ["train.steps=2", "data.max_objects=1", "prior=none", "scheduler.steps=2", "eval.metrics=[hist]"]


def _summary(**over) -> dict:
    cfg = {
        "backend": {"name": "torch"},
        "data": {
            "prompt": "an image of {object} in style_{style}",
            "instance_prompt": "an image of {object} in style_{style}",
        },
        "lora": {"kind": "lora", "unet_lora_rank": 32},
        "prior": {"mode": "shared", "weight": 1.0},
        "augmentation": {"name": "crop"},
        "train": {"steps": 800, "lr": 1e-4, "compile": None, "cuda_graphs": None},
        "init": {"mode": "avg_image", "strength": 0.9},
        "scheduler": {"name": "ddim", "steps": 40, "guidance_scale": 7.5},
        "sample": {"seed": 0},
        "inject": {"mode": "none"},
        "eval": {"suite": "reference"},
    }
    for k, v in over.pop("config", {}).items():
        cfg[k] = {**cfg[k], **v}
    s = {
        "name": "safe",
        "run_dir": "/runs/x",
        "data_root": "/data/train",
        "config": cfg,
        "model": {
            "source": "stabilityai/stable-diffusion-2-1",
            "folder": "/hf/sd21",
            "identity": "abc",
            "random_weights": False,
            "prediction_type": "v_prediction",
        },
        "notice": None,
        "metric_names": ["dino", "hist", "final"],
        "unavailable": {},
        "styles": {
            "07": {
                "objects": ["Aquarium", "bird"],
                "adapter_key": "k7",
                "reused": False,
                "train_seconds": 12.5,
                "init_image": "init/07/average.png",
                "scores": {"dino": 0.5, "hist": 0.25, "final": 0.125, "images": 2},
            }
        },
    }
    s.update(over)
    return s


def test_a_card_names_the_trigger_prompt_the_base_model_and_the_scores():
    text = card_text("07", _summary())
    front = read_front_matter(text)
    assert front["base_model"] == "stabilityai/stable-diffusion-2-1" and front["library_name"] == "diffusers"
    assert front["instance_prompt"] == "an image of {object} in style_07"
    assert front["widget"] == [{"text": "an image of Aquarium in style_07", "output": {"url": "samples.png"}}]
    assert "Trigger prompt: `an image of {object} in style_07`" in text
    row = re.search(r"\| dino \| hist \| final \|\n\|---\|---\|---\|\n(\|.*\|)", text).group(1)
    assert row == "| 0.5000 | 0.2500 | 0.1250 |"
    assert "strength=0.9" in text and "num_inference_steps=40" in text and "guidance_scale=7.5" in text
    assert 'from_pretrained("stabilityai/stable-diffusion-2-1"' in text and 'load_lora_weights("adapters/07")' in text
    assert "unet_lora_rank: 32" in text and "cuda_graphs" not in text  # speed settings are not the adapter's
    assert "random-weight" not in text


def test_a_card_says_random_weights_and_keeps_folders_out_of_base_model(tmp_path):
    s = _summary(
        notice="the tiny model", model={**_summary()["model"], "source": str(tmp_path), "random_weights": True}
    )
    text = card_text("07", s)
    assert "base_model" not in read_front_matter(text)
    assert "**Trained on a random-weight model**" in text and "> Note: the tiny model." in text
    assert f'from_pretrained("{_summary()["model"]["folder"]}"' in text
    assert hub_id("embedded pocket model") is None and hub_id(str(tmp_path)) is None
    assert hub_id("stabilityai/stable-diffusion-2-1") == "stabilityai/stable-diffusion-2-1"


def test_a_card_follows_the_sampler_the_start_and_the_adapter_kind():
    text = card_text("07", _summary(config={"scheduler": {"name": "dpmpp"}, "init": {"mode": "noise"}}))
    assert 'DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++"' in text
    assert "StableDiffusionPipeline.from_pretrained" in text and "strength=" not in text
    text = card_text("07", _summary(config={"lora": {"kind": "lokr"}}))
    assert "```python" not in text and "diffusers' LoRA loader does not read it" in text


def test_the_cards_schedulers_are_the_backends():
    from stylexfer.backends.torch.sample import make_scheduler

    base = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
    assert set(SCHEDULERS) == {n.value for n in SamplerName}
    for name, (cls, args) in SCHEDULERS.items():
        made = make_scheduler(name, base)
        assert type(made).__name__ == cls, name
        for k, v in re.findall(r"(\w+)=([^,]+)", args):
            assert str(made.config[k]) == v.strip('"'), (name, k)


@pytest.mark.slow
def test_a_run_writes_a_card_whose_code_loads_the_adapter_in_stock_diffusers(tmp_path, cache_dir):
    run = tmp_path / "run"
    res = run_cli([*FAST, "data.styles=[00,01]", f"hydra.run.dir={run}"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model_cards"] == [f"adapters/{s}/{f}" for s in ("00", "01") for f in ("README.md", "samples.png")]
    text = (run / "adapters/00/README.md").read_text()
    assert read_front_matter(text)["instance_prompt"] == "an image of {object} in style_00"
    hist = summary["styles"]["00"]["scores"]["hist"]
    assert f"| {hist:.4f} |" in text and "do not compare with the reference report's" in text
    with Image.open(run / "adapters/00/samples.png") as im:  # the style's row of grid.png: average + 1 image
        assert im.size == (48 + 2 * 128, 128 + 14)
    manifest = json.loads((run / "sha256.json").read_text())
    assert "adapters/00/README.md" not in manifest  # the card is the run's own, not a copy from the store
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    here = os.getcwd()
    os.chdir(run)
    try:
        exec(compile(code, "card", "exec"), scope)  # the card's own snippet, run as a user would
    finally:
        os.chdir(here)
    assert scope["pipe"].get_list_adapters() == {"unet": ["default_0"]}
    assert scope["image"].size == (64, 64)
