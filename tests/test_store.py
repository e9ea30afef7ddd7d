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
    assert [Image.open(partial / n).getpixel((0, 0)) for n in names] == [(0, 0, 0), (1, 0, 0), (9, 9, 9), (9, 9, 9), (4, 0, 0)]


def test_chunked_generation_reports_a_failed_write(tmp_path):
    from stylexfer import sample

    with pytest.raises(AttributeError):  # not an image: saving it fails, and the failure surfaces
        sample.make_in_chunks(tmp_path, ["0.png"], 1, lambda i, j: [object()], lambda n: "p", "test")
    assert not (tmp_path / "0.png").exists()
