"""The typed stage specs: built once from the config, read-only, handed to the backend instead of the config, and
the same objects the stages' store keys are made from."""

from __future__ import annotations

import dataclasses
import json

import pytest
from omegaconf.errors import ReadonlyConfigError

from helpers import compose
from stylexfer.backends import ADAPTER_FILE, Backend, TrainOutcome
from stylexfer.data import discover_styles
from stylexfer.specs import SCHEDULING_KEYS, TrainSpec
from stylexfer.train import adapter_spec, train_style


def test_the_spec_is_frozen_and_its_parts_read_only():
    cfg = compose(strategy="safe")
    spec = TrainSpec.from_config(cfg)
    assert (spec.resolution, spec.lora.unet_lora_rank, spec.train.steps) == (cfg.model.resolution, 32, 800)
    assert spec.instance_prompt == "an image of {object} in style_{style}" and spec.prior.on
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.resolution = 128
    with pytest.raises(ReadonlyConfigError):
        spec.train.steps = 5
    cfg.train.steps = 5  # the config changed afterwards: the spec is a copy
    assert spec.train.steps == 800
    assert TrainSpec.from_config(compose(["prior=none"])).prior.on is False


def test_the_key_leaves_out_exactly_the_scheduling_keys():
    spec = TrainSpec.from_config(compose(strategy="safe"))
    key = spec.adapter_key("fingerprint", "m", "pool")
    assert set(spec.train) - set(key["train"]) == set(SCHEDULING_KEYS) | {"timestep_bias"}  # at its default: off
    assert key["prior"] == {"mode": "shared", "weight": 1.0, "pool": "pool"}
    for ov in ("train.checkpoint_every=7", "train.compile=true", "train.styles_per_batch=1"):
        assert TrainSpec.from_config(compose([ov], strategy="safe")).adapter_key("fingerprint", "m", "pool") == key
    for ov in ("train.lr=3e-4", "lora.unet_lora_rank=8", "augmentation=crop_flip", "model.resolution=128"):
        assert TrainSpec.from_config(compose([ov], strategy="safe")).adapter_key("fingerprint", "m", "pool") != key


class _Recording(Backend):
    """A backend that records the spec it is handed and writes a placeholder adapter file."""

    name = "recording"
    device = "cpu"
    dtype = "float32"

    def __init__(self):
        self.specs = []

    def generate(self, **kw):
        raise AssertionError("not used")

    def train(self, styles, pools, spec, ckpt_dir, export_dirs, clock=None, snapshots=None, state_to=None):
        self.specs.append(spec)
        for d in export_dirs:
            (d / ADAPTER_FILE).write_bytes(b"placeholder")
        return TrainOutcome(losses={s.id: [0.5] for s in styles})


def test_the_backend_gets_the_spec_the_key_was_made_from(demo_root, tmp_path):
    (style,) = discover_styles(demo_root, styles=["00"], max_objects=1)
    cfg = compose(["prior=none", "train.steps=3"], strategy="safe")
    key_spec = adapter_spec(style, cfg, "m", None)
    backend = _Recording()
    result = train_style(backend, style, None, cfg, key_spec, tmp_path)
    (got,) = backend.specs
    assert isinstance(got, TrainSpec) and got.adapter_key(style.fingerprint(), "m", None) == key_spec
    assert json.loads((result.dir / "train.json").read_text())["spec"] == key_spec


def test_a_pool_spec_keys_what_its_images_depend_on_and_not_how_they_are_made():
    from stylexfer.prior import pool_spec

    def spec(*ov):
        return pool_spec(["apple", "dog"], compose(list(ov)).prior, "m", 64, "torch")

    base = spec()
    assert base.prompts[:2] == ("an image of apple", "an image of dog") and len(base.prompts) == 200
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.steps = 3
    for ov in ("prior.batch_size=3", "prior.compile=true"):  # how, not what
        assert spec(ov).key == base.key and spec(ov) == base
    for ov in ("prior.steps=3", "prior.seed=1", "prior.num_class_images=7", "prior.guidance_scale=2.0"):
        assert spec(ov).key != base.key
    assert base.store_spec()["prompts"] == list(base.prompts) and "batch_size" not in base.store_spec()


def test_the_sample_spec_is_frozen_keys_what_not_how_and_gives_the_backend_its_settings(demo_root):
    from helpers import samples_spec
    from stylexfer.sample import samples_store_spec
    from stylexfer.specs import SampleSpec

    (style,) = discover_styles(demo_root, styles=["00"])
    cfg = compose(["inject=styleid", "sample.compile=true"], strategy="safe")
    sp = SampleSpec.from_config(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.steps = 3
    with pytest.raises(ReadonlyConfigError):
        sp.inject.gamma = 0.1
    assert sp.control is None and sp.inject.gamma == 0.75 and sp.img2img and sp.steps == 40
    # compiling is how, not what: the same key; the sampler's steps are what
    assert samples_spec(style, compose(["inject=styleid"], strategy="safe"), "a", "m") == samples_store_spec(
        style, sp, "a", "m"
    )
    assert samples_spec(style, compose(["scheduler.steps=12"], strategy="safe"), "a", "m")["steps"] == 12
    assert sp.generate_settings() == {
        "sampler": "ddim",
        "steps": 40,
        "guidance_scale": 7.5,
        "resolution": cfg.model.resolution,
        "fuse_lora": True,
        "compile": True,
    }
    # the config the spec was built from is not tied to it
    cfg.inject.gamma = 0.2
    assert sp.inject.gamma == 0.75
