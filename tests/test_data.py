"""Data stage: names, prompts, image modes, augmentation, averages, and bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from stylexfer.config import AugmentationConfig
from stylexfer.data import (
    augment,
    average_image,
    can_cache_latents,
    discover_styles,
    load_image,
    object_name_from_file,
    read_prompt_file,
    safe_filename,
)
from stylexfer.errors import DataError


def make_style(root, sid="00", n=3, prompt=("Cat", "Dog"), size=(40, 40), color=(200, 10, 10)):
    d = root / sid / "images"
    d.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, color).save(d / f"Thing_{i}.png")
    if prompt is not None:
        (root / sid / "prompt.json").write_text(json.dumps({str(i): p for i, p in enumerate(prompt)}))
    return root / sid


def test_object_names_come_from_file_names():
    assert object_name_from_file("Aquarium.png") == "aquarium"
    assert object_name_from_file("/x/sea_turtle.jpg") == "sea turtle"
    assert object_name_from_file("Hot-Air  Balloon.PNG") == "hot air balloon"


def test_safe_filenames_are_safe_unique_and_bounded():
    taken: set[str] = set()
    names = ["../x", "a/b", "", "x" * 300, "Café", "猫", "狗", "Cat", "cat", "CAT"]
    stems = [safe_filename(n, taken) for n in names]
    assert len(set(stems)) == len(stems)
    for s in stems:
        assert s and len(s) <= 64 and "/" not in s and "\\" not in s and not s.startswith(".")
        assert s.isascii() and s == s.strip()
    assert stems[0] == "x" and stems[1] == "a_b" and stems[4] == "cafe"
    assert stems[7:] == ["cat", "cat-2", "cat-3"]
    assert stems[5] != stems[6]  # two non-ASCII names do not collide


def test_competition_layout_and_prompt_forms(tmp_path):
    make_style(tmp_path, "00", prompt=("Aquarium", "Phone"))
    d = make_style(tmp_path, "01", prompt=None)
    (d / "prompt.json").write_text(json.dumps(["Wallet", "../etc/passwd", "Wallet"]))
    styles = discover_styles(tmp_path)
    assert [s.id for s in styles] == ["00", "01"]
    assert styles[0].objects == ["Aquarium", "Phone"] and styles[0].image_objects == ["thing 0", "thing 1", "thing 2"]
    assert styles[1].objects == ["Wallet", "../etc/passwd", "Wallet"]  # the prompt keeps the name
    assert styles[1].object_files == ["wallet", "etc_passwd", "wallet-2"]


def test_prompt_json_keys_are_ordered_numerically(tmp_path):
    p = tmp_path / "prompt.json"
    p.write_text(json.dumps({"10": "k", "2": "b", "0": "a"}))
    assert read_prompt_file(p) == ["a", "b", "k"]


@pytest.mark.parametrize(
    "content,needle",
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("{}", "no objects"),
        ("[]", "no objects"),
        ("42", "expected"),
        ('["ok", 3]', "non-empty string"),
        ('{"0": "  "}', "non-empty string"),
    ],
)
def test_bad_prompt_json_names_the_file(tmp_path, content, needle):
    make_style(tmp_path, prompt=None)
    (tmp_path / "00" / "prompt.json").write_text(content)
    with pytest.raises(DataError) as e:
        discover_styles(tmp_path)
    assert str(tmp_path / "00" / "prompt.json") in str(e.value) and needle in str(e.value)


def test_plain_layout_uses_configured_objects(tmp_path):
    (tmp_path / "s1").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "s1" / "Boat.png")
    (s,) = discover_styles(tmp_path, objects=["car", "tree"], max_objects=1)
    assert s.objects == ["car"] and s.image_objects == ["boat"]
    with pytest.raises(DataError, match="data.objects"):
        discover_styles(tmp_path)


def test_missing_root_empty_style_and_unknown_style(tmp_path):
    with pytest.raises(DataError, match=r"^data.root=.*nope: no such folder$"):
        discover_styles(tmp_path / "nope")
    (tmp_path / "00" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        discover_styles(tmp_path)
    assert str(tmp_path / "00" / "images") in str(e.value) and "no images" in str(e.value)
    make_style(tmp_path, "01")
    with pytest.raises(DataError, match="data.styles: 07 not found"):
        discover_styles(tmp_path, styles=["01", "07"])


def test_corrupt_image_fails_naming_the_file(tmp_path):
    make_style(tmp_path)
    bad = tmp_path / "00" / "images" / "Broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError) as e:
        discover_styles(tmp_path)
    assert str(bad) in str(e.value) and "cannot read image" in str(e.value) and "\n" not in str(e.value)


def test_non_image_files_are_skipped_with_a_warning(tmp_path, caplog):
    make_style(tmp_path)
    (tmp_path / "00" / "images" / "notes.txt").write_text("hello")
    (s,) = discover_styles(tmp_path)
    assert len(s.images) == 3
    assert "notes.txt: not an image file" in caplog.text


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **kw)
    return buf.getvalue()


def test_image_modes_are_converted_not_rejected(tmp_path):
    cases = {
        "gray.png": Image.new("L", (8, 8), 100),
        "rgba.png": Image.new("RGBA", (8, 8), (255, 0, 0, 0)),  # fully transparent red → white
        "palette.png": Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"),
        "cmyk.jpg": Image.new("CMYK", (8, 8), (0, 255, 255, 0)),  # red in CMYK
        "sixteen.png": Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    out = {n: np.asarray(load_image(tmp_path / n)) for n in cases}
    for n, a in out.items():
        assert a.shape == (8, 8, 3) and a.dtype == np.uint8, n
    assert (out["gray.png"] == 100).all()
    assert (out["rgba.png"] == 255).all()
    assert (out["palette.png"][..., 2] == 255).all() and (out["palette.png"][..., :2] == 0).all()
    assert out["cmyk.jpg"][..., 0].min() > 200 and out["cmyk.jpg"][..., 1:].max() < 60
    assert (out["sixteen.png"] == 255).all()


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 30)


def test_crop_augmentation_moves_the_window_and_is_seeded():
    arr = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3) % 251
    img = Image.fromarray(arr.astype(np.uint8))
    crop = AugmentationConfig(scale=1.04, random_crop=True)
    outs = [np.asarray(augment(img, 64, crop, np.random.default_rng(s))) for s in range(8)]
    assert all(o.shape == (64, 64, 3) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1  # the window really moves (the baseline's no-op is fixed)
    again = np.asarray(augment(img, 64, crop, np.random.default_rng(3)))
    assert (again == outs[3]).all()
    none = AugmentationConfig(scale=1.0, random_crop=False)
    nones = {np.asarray(augment(img, 64, none, np.random.default_rng(s))).tobytes() for s in range(4)}
    assert len(nones) == 1
    assert can_cache_latents(none) and not can_cache_latents(crop)
    assert not can_cache_latents(AugmentationConfig(scale=1.0, random_crop=False, hflip=True))


def test_non_square_and_small_images_are_resized_up_and_cropped():
    img = Image.new("RGB", (20, 50), (10, 20, 30))
    out = augment(img, 64, AugmentationConfig(scale=1.04), np.random.default_rng(0))
    assert out.size == (64, 64)


def test_average_image_is_the_pixel_mean():
    a = Image.new("RGB", (32, 32), (0, 100, 200))
    b = Image.new("RGB", (64, 64), (100, 200, 0))
    avg = np.asarray(average_image([a, b], 16))
    assert avg.shape == (16, 16, 3)
    assert (avg == np.array([50, 150, 100])).all()
