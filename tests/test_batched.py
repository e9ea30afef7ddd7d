"""All styles in one batched pass equal one style at a time (tiny model, float32, CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import compose
from stylexfer import feed as feed_mod
from stylexfer.backends import ADAPTER_FILE
from stylexfer.backends.torch import trainer as trainer_mod
from stylexfer.backends.torch.trainer import train_styles
from stylexfer.data import discover_styles
from stylexfer.prior import ensure_pool, pool_objects, pool_spec
from stylexfer.specs import TrainSpec
from stylexfer.train import adapter_spec, train_style

OVERRIDES = [
    "train.steps=12",
    "train.lr=1e-3",
    "lora.unet_lora_rank=4",
    "lora.text_encoder_lora_rank=2",
    "prior=shared",
    "prior.num_class_images=4",
    "prior.steps=2",
    "prior.batch_size=4",
    "augmentation=crop_flip",
]


@pytest.fixture(scope="module")
def setup(backend, demo_root, cache_dir):
    cfg = compose(OVERRIDES)
    styles = discover_styles(demo_root)
    pools = [
        ensure_pool(
            backend,
            pool_spec(pool_objects(styles, s, cfg.prior.mode), cfg.prior, "tiny", 64, "torch"),
            cache_dir,
        )
        for s in styles
    ]
    return cfg, styles, pools


def tensors(folder):
    with safe_open(str(folder / ADAPTER_FILE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def assert_close_adapters(a, b, atol=2e-5):
    (ta, ma), (tb, mb) = a, b
    assert ta.keys() == tb.keys() and ma == mb
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=atol, rtol=1e-4, msg=k)


@pytest.fixture(scope="module")
def sequential(setup, backend, tmp_path_factory):
    cfg, styles, pools = setup
    root = tmp_path_factory.mktemp("seq")
    out = {}
    for s, p in zip(styles, pools):
        r = train_style(backend, s, p, cfg, adapter_spec(s, cfg, "tiny", "pool"), root)
        out[s.id] = (tensors(r.dir), r.losses)
    return out


def test_batched_training_equals_one_style_at_a_time(setup, sequential, components, tmp_path):
    cfg, styles, pools = setup
    dirs = [tmp_path / s.id for s in styles]
    done = train_styles(components, styles, pools, TrainSpec.from_config(cfg), None, dirs)
    losses, failed = done.losses, done.failed
    assert failed == {}
    for s, d in zip(styles, dirs):
        (ts, _), seq_losses = sequential[s.id]
        assert any(k.startswith("text_encoder.") for k in ts)
        assert_close_adapters(tensors(d), sequential[s.id][0])
        assert losses[s.id] == pytest.approx(seq_losses, rel=1e-4, abs=1e-6)
    # the model is left as it was: no LoRA layer remains
    assert not any("MultiLora" in type(m).__name__ for m in components.unet.modules())


def test_a_styles_adapter_does_not_depend_on_its_batch_mates(setup, sequential, components, tmp_path):
    cfg, styles, pools = setup
    pick = [2, 0]
    dirs = [tmp_path / styles[i].id for i in pick]
    train_styles(
        components, [styles[i] for i in pick], [pools[i] for i in pick], TrainSpec.from_config(cfg), None, dirs
    )
    for i, d in zip(pick, dirs):
        assert_close_adapters(tensors(d), sequential[styles[i].id][0])


def test_a_diverging_style_stops_alone(setup, sequential, components, tmp_path, monkeypatch):
    cfg, styles, pools = setup
    real = feed_mod.draw_noise
    calls = {"n": 0}

    def poisoned(*a, **k):  # draws are made style by style, step by step (on the look-ahead thread)
        eps, noise, t = real(*a, **k)
        calls["n"] += 1
        return (eps, noise * float("nan"), t) if calls["n"] == 8 else (eps, noise, t)  # style 01 at step 3

    monkeypatch.setattr(feed_mod, "draw_noise", poisoned)
    dirs = [tmp_path / s.id for s in styles]
    done = train_styles(components, styles, pools, TrainSpec.from_config(cfg), None, dirs)
    losses, failed = done.losses, done.failed
    assert failed == {"01": "style 01: loss is nan at step 3"}
    assert not (dirs[1] / ADAPTER_FILE).exists() and len(losses["01"]) == 2
    for i in (0, 2):  # the others are exactly what they would have been
        assert_close_adapters(tensors(dirs[i]), sequential[styles[i].id][0])


def todo_of(styles, cfg):
    return [(s, None, adapter_spec(s, cfg, "tiny", None)) for s in styles]


def test_a_failing_batched_pass_falls_back_to_one_style_at_a_time(backend, demo_root, tmp_path, monkeypatch, caplog):
    from stylexfer import train as train_mod

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(train_mod, "train_group", broken)
    cfg = compose(["prior=none", "train.steps=2"])
    styles = discover_styles(demo_root, styles=["00", "01"])
    assert train_mod.train_in_batches(backend, todo_of(styles, cfg), cfg, tmp_path, None) == ({}, {})
    assert (
        "batched training of 00, 01 failed (RuntimeError: kernel exploded): training them one at a time" in caplog.text
    )


def test_the_compiled_vae_encoder_is_swapped_in_on_cuda_only_and_always_put_back():
    from types import SimpleNamespace

    from stylexfer.backends.torch.trainer import CompiledOrPlain, compiled_vae_encoder

    plain = torch.nn.Linear(3, 3)
    cpu = SimpleNamespace(device=torch.device("cpu"), vae=SimpleNamespace(encoder=plain))
    with compiled_vae_encoder(cpu, True):
        assert cpu.vae.encoder is plain  # nothing to gain on a CPU
    gpu = SimpleNamespace(device=torch.device("cuda"), vae=SimpleNamespace(encoder=plain))  # compiling is lazy
    with compiled_vae_encoder(gpu, False):
        assert gpu.vae.encoder is plain
    with pytest.raises(RuntimeError, match="boom"):
        with compiled_vae_encoder(gpu, True):
            assert isinstance(gpu.vae.encoder, CompiledOrPlain) and gpu.vae.encoder.plain is plain
            raise RuntimeError("boom")
    assert gpu.vae.encoder is plain


def test_a_failing_compile_falls_back_to_the_plain_module_with_one_warning(caplog):
    from stylexfer.backends.torch.trainer import CompiledOrPlain

    calls = []

    def broken(x):
        calls.append(x)
        raise RuntimeError("no C compiler found\nmore detail")

    plain = torch.nn.Linear(3, 2)
    m = CompiledOrPlain(plain, broken)
    x = torch.randn(4, 3)
    with caplog.at_level("WARNING"):
        assert torch.equal(m(x), plain(x))
        assert torch.equal(m(x), plain(x))
    assert len(calls) == 1  # not tried again
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert warnings == [
        "torch.compile of the VAE encoder failed (RuntimeError: no C compiler found); encoding without it"
    ]


def test_the_loop_clock_times_every_step_and_the_log_gives_the_steady_rate(components, demo_root, tmp_path, caplog):
    cfg = compose(["prior=none", "train.steps=6", "augmentation=none"])
    styles = discover_styles(demo_root, styles=["00", "01"])
    clock: list = []
    with caplog.at_level("INFO"):
        train_styles(
            components,
            styles,
            [None, None],
            TrainSpec.from_config(cfg),
            None,
            [tmp_path / s.id for s in styles],
            clock=clock,
        )
    assert len(clock) == 6 and clock == sorted(clock)  # one tick per step, when its losses reached the host
    # the first half of a short pass is left out (compiling and autotuning happen there): steps 5-6
    line = next(r.getMessage() for r in caplog.records if "s per step over steps" in r.getMessage())
    per_step = (clock[-1] - clock[3]) / 2
    assert line == f"2 styles: {per_step:.3f} s per step over steps 5-6 ({2 / per_step:.1f} samples/s)"


def test_the_grid_crops_compiled_encoder_takes_only_its_batch_size():
    """Preparing a pass's grid crops: batches of CROP_BATCH go through the one static compiled graph, a
    smaller last batch through the plain encoder (no second compile for one batch)."""
    from stylexfer.backends.torch.trainer import CompiledOrPlain

    seen = []
    plain = torch.nn.Linear(3, 2)

    def stand_in(x):  # what torch.compile(plain, dynamic=False) computes, counted
        seen.append(x.shape[0])
        return plain(x) + 100.0

    m = CompiledOrPlain(plain, stand_in, batch=4)
    full, last = torch.randn(4, 3), torch.randn(3, 3)
    assert torch.equal(m(full), plain(full) + 100.0)
    assert torch.equal(m(last), plain(last))
    assert seen == [4]
    anyb = CompiledOrPlain(plain, stand_in)  # per-step encoding: every shape compiled
    anyb(last)
    assert seen == [4, 3]


def test_a_pass_encodes_every_styles_crops_and_the_shared_pools_once_in_full_batches(
    setup, components, tmp_path, monkeypatch
):
    """The grid crops of all the pass's styles and of their shared class pool are one stream of batches: every
    batch but the last is full (one compiled shape on CUDA), and a shared class image is encoded once."""
    cfg, styles, pools = setup
    monkeypatch.setattr(trainer_mod, "CROP_BATCH", 64)
    calls = []
    real = components.vae.encode
    monkeypatch.setattr(components.vae, "encode", lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k))
    cfg = compose(OVERRIDES + ["train.steps=1"])
    shared = [pools[0]] * len(styles)  # as a run passes it: one pool object, loaded once
    train_styles(components, styles, shared, TrainSpec.from_config(cfg), None, [tmp_path / s.id for s in styles])
    from stylexfer.data import crop_grid

    per_image = 2 * len(crop_grid((67, 67), 64)[0]) ** 2  # 64 px at 1.04: the centre only; flipped or not
    n = per_image * (sum(len(s.images) for s in styles) + len(pools[0].images))
    assert sum(calls) == n and all(b == 64 for b in calls[:-1]) and len(calls) == -(-n // 64)


def test_exporting_several_slots_through_one_peft_adapter_writes_what_one_at_a_time_would(setup, components, tmp_path):
    from stylexfer.backends.torch.multilora import restore
    from stylexfer.backends.torch.train import export_adapter, export_adapters, inject_adapters

    cfg, styles, _ = setup
    ad = inject_adapters(components, TrainSpec.from_config(cfg), [11, 12, 13])
    restore(components.unet, ad.unet)
    restore(components.text_encoder, ad.text_encoder)
    with torch.no_grad():
        for layer in ad.all_layers():
            layer.B.normal_()  # trained-looking slots: B is zero at the start
    together = {s: tmp_path / "together" / str(s) for s in (0, 2)}
    export_adapters(components, TrainSpec.from_config(cfg), ad, together)
    for s, folder in together.items():
        export_adapter(components, TrainSpec.from_config(cfg), ad, s, tmp_path / "alone" / str(s))
        (ta, ma), (tb, mb) = tensors(folder), tensors(tmp_path / "alone" / str(s))
        # the same tensors, bit for bit, and the same metadata (safetensors writes its metadata's keys in a
        # random order, so the files' bytes differ even between two saves of one state dict)
        assert ta.keys() == tb.keys() and ma == mb and all(torch.equal(ta[k], tb[k]) for k in ta)
    a0, a2 = tensors(together[0])[0], tensors(together[2])[0]
    assert any(not torch.equal(a0[k], a2[k]) for k in a0)  # each file has its own slot
    assert not any("Lora" in type(m).__name__ for m in components.unet.modules())  # peft's layers taken out again
