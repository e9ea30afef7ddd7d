"""Atomic writes and build-once directories."""

from __future__ import annotations

import json
import threading

import pytest

from stylexfer.store import atomic_write_json, build_once, stable_hash


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"k": 1})
    atomic_write_json(tmp_path / "x.json", {"k": 2})
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_build_once_builds_once_and_cleans_up_failures(tmp_path):
    calls = []

    def builder(d):
        calls.append(d)
        (d / "f").write_text("done")

    def failing(d):
        (d / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "t", failing)
    assert not (tmp_path / "t").exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no half-written directory left

    results = []
    threads = [threading.Thread(target=lambda: results.append(build_once(tmp_path / "t", builder))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum(built for _, built in results) == 1
    assert (tmp_path / "t" / "f").read_text() == "done"
    # removed while this process runs (a user, a store clean-up): built again, not trusted from memory
    import shutil

    shutil.rmtree(tmp_path / "t")
    path, built = build_once(tmp_path / "t", builder)
    assert built and len(calls) == 2 and (path / "f").read_text() == "done"


def test_chunked_generation_skips_finished_chunks_and_checkpoints_after_each_write(tmp_path, monkeypatch):
    from PIL import Image

    from stylexfer import sample

    names = [f"{i}.png" for i in range(5)]
    partial = tmp_path / "partial"
    partial.mkdir()
    for n in names[2:4]:  # the second chunk was made before a kill
        Image.new("RGB", (4, 4), (9, 9, 9)).save(partial / n)
    made, points = [], []
    monkeypatch.setattr(sample.faults, "checkpoint", points.append)

    def make(i, j):
        made.append((i, j))
        return [Image.new("RGB", (4, 4), (k, 0, 0)) for k in range(i, j)]

    sample.make_in_chunks(partial, names, 2, make, lambda n: f"p:{n}", "test")
    assert made == [(0, 2), (4, 5)]
    assert points == ["p:0", "p:1", "p:4"]
    assert [Image.open(partial / n).getpixel((0, 0)) for n in names] == [
        (0, 0, 0),
        (1, 0, 0),
        (9, 9, 9),
        (9, 9, 9),
        (4, 0, 0),
    ]


def test_chunked_generation_reports_a_failed_write(tmp_path):
    from stylexfer import sample

    with pytest.raises(AttributeError):  # not an image: saving it fails, and the failure surfaces
        sample.make_in_chunks(tmp_path, ["0.png"], 1, lambda i, j: [object()], lambda n: "p", "test")
    assert not (tmp_path / "0.png").exists()


def test_result_files_follow_the_umask_like_any_other_file(tmp_path):
    import os

    from PIL import Image

    from stylexfer.store import atomic_save_image, atomic_write_text

    old = os.umask(0o022)
    try:
        a = atomic_write_text(tmp_path / "summary.md", "x")
        b = atomic_save_image(Image.new("RGB", (4, 4)), tmp_path / "grid.png")
        plain = tmp_path / "main.log"
        plain.write_text("log")
        assert {oct(p.stat().st_mode & 0o777) for p in (a, b, plain)} == {"0o644"}
        os.umask(0o077)
        c = atomic_write_text(tmp_path / "private.md", "x")
        assert c.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[:1000]))
    else:  # flip one byte in the middle
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def new_process():
    """What a later run sees: nothing verified yet."""
    from stylexfer import store

    store._verified.clear()


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_store_entry_is_rebuilt_with_one_warning_not_reused(how, backend, demo_root, tmp_path, caplog):
    """An adapter, a class image and a sample damaged outside the writer: each stage builds its entry again,
    with one warning line naming it, and ends with the same bytes as the first build."""
    from helpers import compose, make_samples
    from stylexfer.backends import ADAPTER_FILE
    from stylexfer.data import discover_styles
    from stylexfer.prior import ensure_pool, pool_spec
    from stylexfer.train import adapter_spec, train_style

    cfg = compose(
        [
            "train.steps=3",
            "prior.num_class_images=2",
            "prior.steps=2",
            "scheduler.steps=2",
            "data.max_objects=1",
            "prior.batch_size=2",
        ]
    )
    (style,) = discover_styles(demo_root, styles=["00"], max_objects=1)
    pspec = pool_spec(["apple", "dog"], cfg.prior, "tiny", 64, "torch")
    pool = ensure_pool(backend, pspec, tmp_path)
    aspec = adapter_spec(style, cfg, "tiny", "p")
    first = train_style(backend, style, pool, cfg, aspec, tmp_path)
    sdir, recs, _ = make_samples(backend, style, first, cfg, "tiny", tmp_path)
    files = [first.dir / ADAPTER_FILE, pool.dir / "00001.png", sdir / "images" / recs[0].file.split("/")[-1]]
    good = [f.read_bytes() for f in files]
    for f in files:
        damage(f, how)
    new_process()
    caplog.clear()
    with caplog.at_level("WARNING"):
        pool2 = ensure_pool(backend, pspec, tmp_path)
        again = train_style(backend, style, pool2, cfg, aspec, tmp_path)
        make_samples(backend, style, again, cfg, "tiny", tmp_path)
    assert not again.reused
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3 and all("is damaged" in w and "building it again" in w for w in warnings)
    for name in ("00001.png", ADAPTER_FILE, recs[0].file.split("/")[-1]):
        assert sum(name in w for w in warnings) == 1
    # rebuilt to what was written first: the images byte for byte; the adapter tensor for tensor and with the same
    # metadata (safetensors writes its metadata map in no fixed order, so the file's bytes may differ)
    assert [f.read_bytes() for f in files[1:]] == good[1:]
    from safetensors.torch import load as load_st

    assert {k: v.tolist() for k, v in load_st(files[0].read_bytes()).items()} == {
        k: v.tolist() for k, v in load_st(good[0]).items()
    }
    meta = lambda b: json.loads(b[8 : 8 + int.from_bytes(b[:8], "little")])["__metadata__"]  # noqa: E731
    assert meta(files[0].read_bytes()) == meta(good[0])
    new_process()
    caplog.clear()
    assert train_style(backend, style, pool2, cfg, aspec, tmp_path).reused  # intact now: reused, silently
    assert "damaged" not in caplog.text
