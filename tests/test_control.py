"""Structure control (control=canny, stylexfer/control.py): the shipped pocket ControlNet (hash checked), the
edge maps and their agreement measure, control=none leaving the samples' key as it was, control.scale=0 giving
the images of the same call without a ControlNet, the pocket ControlNet holding the edges it is given, the first
pass as a store stage shared by styles, and bad input as one line naming the key."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import compose, run_cli, samples_spec
from stylexfer import control
from stylexfer.data import average_image, discover_styles
from stylexfer.errors import ConfigError, ModelNotFoundError
from stylexfer.sample import control_spec, structure_jobs
from stylexfer.specs import SampleSpec


def arr(img):
    return np.asarray(img, dtype=np.int16)


@pytest.fixture(scope="module")
def pocket():
    """The pocket model's components on CPU in float32."""
    from omegaconf import OmegaConf

    from stylexfer.backends.torch.models import load_components
    from stylexfer.models import resolve_model

    mc = OmegaConf.create(
        {"name": "pocket", "path": None, "revision": None, "variant": None, "local_files_only": True,
         "device": "cpu", "dtype": "float32"}
    )  # fmt: skip
    return load_components(resolve_model(mc, None), mc)


def _edges_of_renders(n=14, seed=99):
    from stylexfer.world import BASE_STYLES, OBJECTS, Pose, render

    rng = np.random.default_rng(seed)
    names = sorted(OBJECTS)[:n]
    return names, [
        control.canny(render(o, BASE_STYLES[i % len(BASE_STYLES)], Pose.random(rng), 64, seed=seed + i))
        for i, o in enumerate(names)
    ]


def test_canny_edges_and_their_agreement():
    """The edges of a picture agree with themselves (1.0), a shifted copy within 1 px still agrees, a far shift
    and a blank picture do not."""
    from stylexfer.world import Pose, render

    img = render("house", "flat_warm", Pose.random(np.random.default_rng(0)), 64, seed=0)
    edges = control.canny(img)
    assert edges.mode == "RGB" and edges.size == (64, 64) and 0 < (arr(edges)[..., 0] > 0).mean() < 0.3
    assert control.edge_agreement(img, edges) == pytest.approx(1.0)
    shifted = Image.fromarray(np.roll(np.asarray(img), 1, axis=1))
    assert control.edge_agreement(shifted, edges) > 0.9
    far = Image.fromarray(np.roll(np.asarray(img), 9, axis=0))
    assert control.edge_agreement(far, edges) < 0.6
    assert control.edge_agreement(Image.new("RGB", (64, 64)), edges) == 0.0


def test_the_shipped_pocket_controlnet_matches_its_record_and_a_damaged_copy_is_refused(tmp_path):
    from stylexfer.embedded import check_shipped

    folder = control.model_folder(compose(["control=canny"]).control, "pocket")
    assert folder == control.SHIPPED_POCKET
    rec = json.loads((folder / "controlnet.json").read_text())
    assert rec["random_weights"] is False and rec["conditioning_embedding_out_channels"] == [16, 32, 64]
    assert rec["check"]["edge_agreement"]["with"] > rec["check"]["edge_agreement"]["without"] + 0.1
    size = (folder / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 6 * 2**20  # small enough to ship beside the pocket model (4.95 MiB)
    copy = tmp_path / "cn"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "diffusion_pytorch_model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "diffusion_pytorch_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError, match=r"diffusion_pytorch_model\.safetensors: sha256 differs"):
        check_shipped(copy, "the pocket ControlNet")


def test_control_none_leaves_the_samples_key_as_it_was_and_canny_adds_one_part(demo_root):
    (style,) = discover_styles(demo_root, styles=["00"])
    none = samples_spec(style, compose(["control=none"]), "a", "m")
    assert none == samples_spec(style, compose([]), "a", "m") and "control" not in none
    on = samples_spec(style, compose(["control=canny"]), "a", "m")
    assert {k: v for k, v in on.items() if k != "control"} == none
    c = on["control"]
    assert c["mode"] == "canny" and c["scale"] == 1.0 and c["controlnet"] == control.identity(control.SHIPPED_POCKET)
    # the first pass: the object's base prompt and a seed that is the object's, not the style's
    (other,) = discover_styles(demo_root, styles=["01"])
    canny = SampleSpec.from_config(compose(["control=canny"]))
    jobs0, jobs1 = structure_jobs(style, canny), structure_jobs(other, canny)
    assert jobs0[0][0] == f"an image of {style.objects[0]}"
    shared = set(style.objects) & set(other.objects)
    assert shared and all(
        j0 == j1 for o in shared for j0, j1 in [(jobs0[style.objects.index(o)], jobs1[other.objects.index(o)])]
    )
    assert (
        on["control"]["structure"]["key"]
        == samples_spec(other, compose(["control=canny"]), "a", "m")["control"]["structure"]["key"]
    )
    scaled = samples_spec(style, compose(["control=canny", "control.scale=0.5"]), "a", "m")
    assert scaled["control"]["scale"] == 0.5 and scaled["control"]["structure"] == c["structure"]


def test_scale_0_gives_the_images_without_a_controlnet_and_the_pocket_controlnet_holds_the_edges(pocket):
    """img2img from an average image at strength 0.9 (the recipe's start): with control.scale=0 the ControlNet
    pipeline gives the plain pipeline's pixels (observed: identical; allowed 1/255). Text-to-image on the base
    model from edge maps of held-back base-style renders: the output's edges agree with the control's better
    with the pocket ControlNet than without (observed on the CPU, 20 steps: 0.85 with, 0.58 without)."""
    from stylexfer.backends.torch.sample import sampling
    from stylexfer.world import HELD_OUT_STYLES, Pose, render

    names, edges = _edges_of_renders()
    prompts = [f"an image of {o}" for o in names]
    seeds = list(range(len(names)))
    neon = next(s for s in HELD_OUT_STYLES if s.name == "neon")
    init = average_image(
        [render(o, neon, Pose.random(np.random.default_rng(i)), 64, i) for i, o in enumerate(names)], 64
    )
    kw = dict(sampler="ddim", steps=8, guidance_scale=7.5, resolution=64, init_image=init, strength=0.9)
    ctl = {"model": control.SHIPPED_POCKET, "scale": 0.0, "start": 0.0, "end": 1.0}
    with sampling(pocket, **kw, control=ctl) as make:
        zero = make(prompts[:4], seeds[:4], controls=edges[:4])
    with sampling(pocket, **kw) as make:
        plain = make(prompts[:4], seeds[:4])
    assert max(np.abs(arr(a) - arr(b)).max() for a, b in zip(zero, plain)) <= 1

    kw = dict(sampler="ddim", steps=20, guidance_scale=5.0, resolution=64)
    with sampling(pocket, **kw, control={**ctl, "scale": 1.0}) as make:
        held = make(prompts, seeds, controls=edges)
    with sampling(pocket, **kw) as make:
        free = make(prompts, seeds)
    with_c = float(np.mean([control.edge_agreement(a, e) for a, e in zip(held, edges)]))
    without = float(np.mean([control.edge_agreement(a, e) for a, e in zip(free, edges)]))
    assert with_c > without + 0.1, (with_c, without)


def test_the_first_pass_is_a_store_stage_shared_by_styles_and_runs(tmp_path, demo_root):
    """A run with control=canny draws each object once with the base model into <store>/structure/<key>/; a
    second run asking for the same objects with another scale draws none again; its control images are in the
    run folder."""
    args = [
        "+strategy=safe", "train.steps=2", "data.max_objects=2", "prior=none", "scheduler.steps=3",
        "eval.metrics=[hist]", "control=canny", f"paths.cache_dir={tmp_path / 'c'}",
    ]  # fmt: skip
    r1 = run_cli([*args, f"hydra.run.dir={tmp_path / 'r1'}"], cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]
    (stage,) = (tmp_path / "c" / "structure").iterdir()
    drawn = sorted(p.name for p in stage.iterdir())
    styles = discover_styles(demo_root, max_objects=2)
    assert len(drawn) == len({o for s in styles for o in s.objects})  # an object two styles ask for: once
    r2 = run_cli([*args, "control.scale=0.5", f"hydra.run.dir={tmp_path / 'r2'}"], cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "structure: drawing" in r1.stderr and "structure: drawing" not in r2.stderr
    assert sorted(p.name for p in stage.iterdir()) == drawn
    for s in styles:
        ctl = sorted(p.name for p in (tmp_path / "r2" / "control" / s.id).iterdir())
        assert ctl == sorted(p.name for p in (tmp_path / "r2" / "images" / s.id).iterdir())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["control.scale=-0.5"], r"^control\.scale=-0\.5: must be >= 0$"),
        (["control.start=0.8", "control.end=0.5"], r"^control\.start=0\.8 \(end 0\.5\): needs 0 <= start < end"),
        (["control.base_prompt=a cat"], r"^control\.base_prompt=a cat: must contain \{object\}$"),
        (["backend=jittor"], r"^control\.mode=canny: structure control runs on the PyTorch backend only"),
    ],
)
def test_bad_control_values_fail_naming_the_key(overrides, message):
    from stylexfer.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(compose(["control=canny", *overrides]))


def test_folders_the_run_cannot_use_fail_naming_the_key(tmp_path, demo_root):
    styles = discover_styles(demo_root, styles=["00"])
    with pytest.raises(ConfigError, match=r"^control\.source=.*nowhere: no such folder"):
        control.check(compose(["control=canny", f"control.source={tmp_path / 'nowhere'}"]).control, "pocket", styles)
    content = tmp_path / "content"
    content.mkdir()
    Image.new("RGB", (64, 64)).save(content / f"{styles[0].object_files[0]}.png")
    with pytest.raises(ConfigError, match=r"^control\.source=.*content: no content image for " + styles[0].objects[1]):
        control.check(compose(["control=canny", f"control.source={content}"]).control, "pocket", styles)
    for stem in styles[0].object_files:
        Image.new("RGB", (64, 64)).save(content / f"{stem}.png")
    assert control.check(compose(["control=canny", f"control.source={content}"]).control, "pocket", styles)
    with pytest.raises(ConfigError, match=r"^control\.model: required for model=sd21"):
        control.check(compose(["control=canny"]).control, "sd21", styles)
    with pytest.raises(ModelNotFoundError, match=r"^control\.model=.*gone: no such folder"):
        control.check(compose(["control=canny", f"control.model={tmp_path / 'gone'}"]).control, "sd21", styles)
    assert control.check(compose([]).control, "sd21", styles) is None  # off: nothing is read


def test_a_missing_controlnet_on_the_command_line_is_one_line_before_any_work(tmp_path):
    r = run_cli(
        ["model=tiny", "control=canny", f"paths.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "control.model: required for model=tiny" in lines[0]
    assert not (tmp_path / "c" / "adapters").exists()  # nothing trained
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("summary*"))


def test_a_content_folder_gives_the_structure(tmp_path, demo_root):
    """control.source=DIR: each object's control image is the edges of its content image (here the held-out
    renders of the style's own objects), and the key names the content's digests."""
    (style,) = discover_styles(demo_root, styles=["00"], max_objects=2)
    content = tmp_path / "content"
    content.mkdir()
    for i, stem in enumerate(style.object_files):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(content / f"{stem}.png")
    cfg = compose(["control=canny", f"control.source={content}", "data.max_objects=2"])
    spec = control_spec(style, SampleSpec.from_config(cfg), "m")
    assert spec["structure"]["dir"] == str(content.resolve()) and len(spec["structure"]["digests"]) == 2


def test_a_hub_id_is_found_in_the_local_cache_offline_and_missing_is_one_line(tmp_path, monkeypatch):
    """control.model=<hub id>: read from the Hugging Face cache (here a snapshot holding the shipped pocket
    ControlNet's files, laid out as huggingface_hub keeps them), offline; not there → one line naming the key."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--pocket--controlnet-canny"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(control.SHIPPED_POCKET / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    folder = control.model_folder(compose(["control=canny", "control.model=pocket/controlnet-canny"]).control, "sd21")
    assert folder == snap and control.identity(folder) == control.identity(control.SHIPPED_POCKET)
    with pytest.raises(ModelNotFoundError, match=r"^control\.model=pocket/absent: weights not in the local Hugging"):
        control.model_folder(compose(["control=canny", "control.model=pocket/absent"]).control, "sd21")
