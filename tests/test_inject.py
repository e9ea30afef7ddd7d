"""Style injection (StyleID): the layers it may touch, its exactness, its store stage, and its bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import REPO, compose, samples_spec
from stylexfer import inject
from stylexfer.backends.torch.inject import Injection, installed, predicted_x0_eps
from stylexfer.backends.torch.sample import generate, make_pipeline, sampling
from stylexfer.data import discover_styles
from stylexfer.errors import ConfigError
from stylexfer.sample import injection_request, sample_jobs, samples_store_spec
from stylexfer.specs import SampleSpec


def arr(img):
    return np.asarray(img, dtype=np.int16)


def test_the_default_layers_are_the_decoders_two_highest_resolution_levels():
    pocket = inject.unet_config_of(REPO / "stylexfer" / "assets" / "pocket")
    assert inject.default_layers(pocket) == [
        f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (1, 2) for a in (0, 1)
    ]
    sd = {"up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "layers_per_block": 2}
    # StyleID's layers 6-11: SD's up_blocks.2 and up_blocks.3, three attentions each
    assert inject.default_layers(sd) == [
        f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (2, 3) for a in range(3)
    ]
    assert len([n for names in inject.self_attention_layers(sd) for n in names]) == 9


def test_v_and_epsilon_predictions_give_back_the_same_clean_latent_and_noise():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    alpha = torch.tensor(0.3)
    z = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    v = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0
    for out, kind in ((eps, "epsilon"), (v, "v_prediction")):
        got_x0, got_eps = predicted_x0_eps(out, z, alpha, kind)
        assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-5)
    with pytest.raises(ValueError, match="sample"):
        predicted_x0_eps(v, z, alpha, "sample")


def test_injecting_a_samples_own_keys_and_values_with_gamma_1_and_t_1_reproduces_it(components):
    """Record every injected layer's keys and values along a plain sampling trajectory, then sample again
    with those banks injected (gamma = 1: the twin's queries; T = 1): the injected images are the plain ones.
    Observed: identical pixels on the CPU (the tolerance allows 1/255 for float rounding)."""
    c = components
    pipe = make_pipeline(c, "ddim")
    pipe.scheduler.set_timesteps(5)
    layers = inject.default_layers(dict(c.unet.config))
    prompts = ["an image of cat in style_00", "an image of boat in style_00"]
    state = Injection(layers, [t.item() for t in pipe.scheduler.timesteps], gamma=1.0, temperature=1.0)
    with installed(c.unet, state):
        state.mode = "record"
        plain = generate(pipe, prompts, [3, 4], 5, 1.0, 64)  # guidance 1: no unconditional half
        state.mode, state.refs = "inject", torch.arange(2)
        both = generate(pipe, prompts * 2, [3, 4] * 2, 5, 1.0, 64)
        state.mode = None
    assert all(np.abs(arr(p) - arr(t)).max() <= 1 for p, t in zip(plain, both[:2]))  # the twins
    assert all(np.abs(arr(p) - arr(i)).max() <= 1 for p, i in zip(plain, both[2:]))  # the injected rows
    # and the processors are gone afterwards
    assert not any("Injecting" in type(p).__name__ for p in c.unet.attn_processors.values())


def _injected(components, demo_root, tmp_path, overrides, seeds=(1, 2, 3)):
    cfg = compose(["model=tiny", "model.resolution=64", "scheduler.steps=6", "inject=styleid", *overrides])
    (style,) = discover_styles(demo_root, styles=["01"])
    sp = SampleSpec.from_config(cfg)
    spec = samples_store_spec(style, sp, None, "tiny")
    from stylexfer.data import average_image

    init = average_image(style.images, 64)
    request, refs = injection_request(style, sp, spec, tmp_path, init)
    prompts = [f"an image of {o} in style_01" for o in ("cat", "boat", "cup")]
    kw = dict(sampler="ddim", steps=6, guidance_scale=7.5, resolution=64, init_image=init, strength=0.9)
    with sampling(components, **kw, inject=request) as make:
        got = make(prompts, list(seeds), refs[:3])
    with sampling(components, **kw) as make:
        plain = make(prompts, list(seeds))
    return got, plain, request, refs, style


def test_injection_changes_the_images_and_its_bank_is_a_store_stage_reused_by_a_gamma_sweep(
    components, demo_root, tmp_path, monkeypatch
):
    got, plain, request, refs, style = _injected(components, demo_root, tmp_path, [])
    assert refs[:3] == [0, 1, 2] and len(request["references"]) == len(style.images)  # cycle over the style's images
    assert request["references"][1].size == (64, 64)
    assert (request["bank_dir"] / "bank.safetensors").is_file()
    diff = [np.abs(arr(a) - arr(b)).mean() for a, b in zip(got, plain)]
    assert min(diff) > 1.0, diff  # injection does something to every image

    from stylexfer.backends.torch import inject as torch_inject

    def no_inversion(*a, **k):
        raise AssertionError("inverted again")

    monkeypatch.setattr(torch_inject, "invert", no_inversion)
    again, _, request2, _, _ = _injected(components, demo_root, tmp_path, [])
    assert request2["bank_dir"] == request["bank_dir"]
    assert all(np.abs(arr(a) - arr(b)).max() <= 1 for a, b in zip(got, again))  # the stored bank, same images
    other, _, request3, _, _ = _injected(components, demo_root, tmp_path, ["inject.gamma=0.3"])
    assert request3["bank_dir"] == request["bank_dir"]  # gamma is no part of the bank's key: one inversion
    assert max(np.abs(arr(a) - arr(b)).mean() for a, b in zip(got, other)) > 0.1  # observed 0.25 (tiny model)


def test_gamma_0_needs_no_twin_and_all_references_concatenate(components, demo_root, tmp_path):
    got, plain, _, _, _ = _injected(components, demo_root, tmp_path, ["inject.gamma=0", "inject.adain_init=false"])
    assert len(got) == 3 and all(im.size == (64, 64) for im in got)
    cat, _, req, refs, _ = _injected(
        components, demo_root, tmp_path, ["inject.reference=all", "inject.reference_images=3"]
    )
    assert len(req["references"]) == 3 and refs[:3] == [0, 0, 0]
    assert max(np.abs(arr(a) - arr(b)).mean() for a, b in zip(cat, got)) > 0.5


def test_inject_none_leaves_the_samples_key_and_the_backend_call_as_they_were(demo_root):
    (style,) = discover_styles(demo_root, styles=["00"])
    none = samples_spec(style, compose(["inject=none"]), "a", "m")
    assert none == samples_spec(style, compose([]), "a", "m") and "inject" not in none
    on = samples_spec(style, compose(["inject=styleid"]), "a", "m")
    assert on["inject"]["gamma"] == 0.75 and on["inject"]["temperature"] == 1.5
    assert {k: v for k, v in on.items() if k != "inject"} == none
    assert len(sample_jobs(style, SampleSpec.from_config(compose([])))) == len(style.objects)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["inject.gamma=1.5"], r"^inject\.gamma=1\.5: must be in \[0, 1\]$"),
        (["inject.temperature=0"], r"^inject\.temperature=0\.0: must be > 0$"),
        (["inject.share=0"], r"^inject\.share=0\.0: must be in \(0, 1\]$"),
        (["backend=jittor"], r"^inject\.mode=styleid: style injection runs on the PyTorch backend only"),
    ],
)
def test_bad_inject_values_fail_naming_the_key(overrides, message):
    from stylexfer.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(compose(["inject=styleid", *overrides]))


def test_unknown_layers_and_too_many_references_fail_naming_the_key_and_the_valid_names():
    pocket = REPO / "stylexfer" / "assets" / "pocket"
    cfg = compose(["inject=styleid", "inject.layers=[up_blocks.9.attentions.0.transformer_blocks.0.attn1]"])
    with pytest.raises(ConfigError, match=r"^inject\.layers=.*valid: up_blocks\.1\.attentions\.0\.transformer_blocks"):
        inject.check(cfg.inject, pocket, {"00": 10})
    cfg = compose(["inject=styleid", "inject.reference_images=12"])
    with pytest.raises(
        ConfigError, match=r"^inject\.reference_images=12: more than these styles have: 00 \(10 images\)"
    ):
        inject.check(cfg.inject, pocket, {"00": 10})
    inject.check(compose(["inject=styleid"]).inject, pocket, {"00": 10})  # the defaults pass
    inject.check(compose([]).inject, REPO / "nowhere", {"00": 1})  # off: the model folder is not read


def test_a_bad_inject_value_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    from helpers import run_cli

    r = run_cli(
        [
            "model=tiny",
            "inject=styleid",
            "inject.layers=[nope]",
            f"paths.cache_dir={tmp_path / 'c'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "inject.layers=['nope']" in lines[0] and "valid: up_blocks." in lines[0]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("summary*"))
