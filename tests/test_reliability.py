"""Nothing lost, nothing misleading (docs/reliability.md): a run folder of its own per run, a failing style
reported by its cause, atomic and independent run-folder copies, unknown keys refused also with ``+``, every
shipped file checked, storage errors in one line. (Interrupts: tests/test_resume.py.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import REPO, compose, run_cli
from stylexfer import store
from stylexfer.errors import ConfigError, ModelNotFoundError

# a run of seconds on the pocket model: one style, one object, two steps, the weight-free metric
FAST = ["train.steps=2", "data.max_objects=1", "prior=none", "scheduler.steps=2", "eval.metrics=[hist]"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------ 1. a folder per run


def test_claim_dir_gives_every_caller_a_folder_of_its_own(tmp_path):
    got, lock = [], threading.Lock()

    def claim():
        p = store.claim_dir(tmp_path / "runs" / "2026-12-02_10-00-00")
        with lock:
            got.append(p.name)

    threads = [threading.Thread(target=claim) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(["2026-12-02_10-00-00"] + [f"2026-12-02_10-00-00-{n}" for n in range(1, 12)])
    assert all((tmp_path / "runs" / n).is_dir() for n in got)


def test_showing_the_config_claims_no_folder(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "stylexfer", "--cfg", "hydra"], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    """The folder name is the same for all three (as two runs in one second get): the first gets it, the
    others the next free ``-N``; each folder holds exactly its own run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", STYLEXFER_CACHE=str(tmp_path / "store"))
    same = "hydra.run.dir=${stylexfer.claim:experiments/same-second}"
    cmd = [sys.executable, "-m", "stylexfer", *FAST, same]
    procs = [
        subprocess.Popen([*cmd, f"data.styles=[{s}]"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for s in ("00", "01", "00")  # two configs, and the first one twice
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for e in errs]
    folders = sorted((tmp_path / "experiments").iterdir())
    assert [f.name for f in folders] == ["same-second", "same-second-1", "same-second-2"]
    styles = []
    for f in folders:
        s = json.loads((f / "summary.json").read_text())
        assert s["run_dir"] == str(f) and s["status"] == "finished"
        styles.append(list(s["styles"]))
        assert sorted(p.name for p in (f / "images").iterdir()) == list(s["styles"])  # no other run's images
        log = (f / "main.log").read_text()
        assert log.count("run finished") == 1  # one run's log, not two interleaved
    assert sorted(styles) == [["00"], ["00"], ["01"]]


# ---------------------------------------------------------------------- 2. a failing style, by its cause


@pytest.mark.slow
def test_a_run_whose_only_style_diverges_says_so_in_one_line(tmp_path):
    res = run_cli([*FAST, "train.steps=4", "data.styles=[00]", "train.lr=1e6"], tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    (line,) = error_lines(res.stderr)
    assert line.startswith("error: style 00: loss is nan at step "), line
    assert "Traceback" not in res.stderr and "cannot write empty image" not in res.stderr
    (run,) = (tmp_path / "experiments" / "default").iterdir()
    assert not any((run / n).exists() for n in ("summary.json", "grid.png", "scores.json", "loss.png"))


# ------------------------------------------------------------------ 3. atomic, independent run-folder copies


@pytest.fixture
def entry(tmp_path):
    """A sealed store entry: an adapter-sized safetensors file (written 0600 by safetensors) and a JSON."""
    import torch
    from safetensors.torch import save_file

    def build(tmp: Path):
        save_file({"w": torch.arange(200_000, dtype=torch.float32)}, str(tmp / "pytorch_lora_weights.safetensors"))
        (tmp / "train.json").write_text('{"losses": [1.0]}')

    path, built = store.build_once(tmp_path / "store" / "adapters" / "k1", build)
    assert built
    return path


def test_a_store_entry_and_its_copies_follow_the_umask(entry, tmp_path):
    mode = 0o666 & ~_umask()
    weights = entry / "pytorch_lora_weights.safetensors"
    assert weights.stat().st_mode & 0o777 == mode  # safetensors wrote 0600; sealing gives the umask's mode
    store.copy_tree(entry, tmp_path / "run" / "adapters" / "00")
    copy = tmp_path / "run" / "adapters" / "00" / "pytorch_lora_weights.safetensors"
    assert copy.stat().st_mode & 0o777 == mode
    assert copy.stat().st_nlink == 1 and not os.path.samefile(copy, weights)  # no hard link into the store
    assert copy.read_bytes() == weights.read_bytes()


def test_a_copy_that_fails_midway_leaves_nothing_under_its_final_name(entry, tmp_path, monkeypatch):
    """A full disk half-way through the adapter: no file under its name, no temporary left; the next copy
    (the disk has room again) writes it whole."""
    dst = tmp_path / "run" / "adapters" / "00"
    real = shutil.copyfileobj

    def disk_full(src, dst_file, length=0):
        dst_file.write(src.read(300_000))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_reflink", lambda src, dst: False)
    monkeypatch.setattr(store.shutil, "copyfileobj", disk_full)
    with pytest.raises(OSError) as e:
        store.copy_tree(entry, dst)
    assert e.value.errno == errno.ENOSPC
    assert not (dst / "pytorch_lora_weights.safetensors").exists()
    assert [p.name for p in dst.iterdir()] == []  # no temporary file left either
    monkeypatch.setattr(store.shutil, "copyfileobj", real)
    digests = store.copy_tree(entry, dst)
    assert (
        store.file_digest(dst / "pytorch_lora_weights.safetensors", 64) == digests["pytorch_lora_weights.safetensors"]
    )


def test_a_damaged_or_linked_copy_is_never_taken_as_done(entry, tmp_path):
    dst = tmp_path / "run" / "adapters" / "00"
    store.copy_tree(entry, dst)
    weights = dst / "pytorch_lora_weights.safetensors"
    whole = weights.read_bytes()
    with open(weights, "r+b") as f:  # truncated under its final name, as an old run's disk-full left it
        f.truncate(1000)
    (dst / "train.json").unlink()
    os.link(entry / "train.json", dst / "train.json")  # a hard link into the store, as old runs made
    untouched = tmp_path / "run" / "adapters" / "untouched.txt"
    untouched.write_text("x")
    store.copy_tree(entry, dst)
    assert weights.read_bytes() == whole
    assert (dst / "train.json").stat().st_nlink == 1
    ino = weights.stat().st_ino
    store.copy_tree(entry, dst)  # whole copies are kept as they are
    assert weights.stat().st_ino == ino


@pytest.mark.slow
def test_a_rerun_into_a_finished_folder_mends_a_damaged_copy(tmp_path):
    args = [*FAST, "data.styles=[00]", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(args, tmp_path).returncode == 0
    run = tmp_path / "run"
    record = json.loads((run / store.FOLDER_MANIFEST).read_text())
    assert set(record) >= {"adapters/00/pytorch_lora_weights.safetensors", "adapters/00/train.json"}
    assert any(k.startswith("images/00/") for k in record)
    weights = run / "adapters" / "00" / "pytorch_lora_weights.safetensors"
    assert weights.stat().st_nlink == 1 and weights.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with open(weights, "r+b") as f:
        f.truncate(1000)
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "adapters/00/pytorch_lora_weights.safetensors: sha256 differs from sha256.json: mending it" in res.stderr
    assert store.file_digest(weights, 64) == record["adapters/00/pytorch_lora_weights.safetensors"]
    res = run_cli(args, tmp_path)  # now whole: skipped as finished
    assert res.returncode == 0 and "already finished with the same config: skipping" in res.stderr


def test_an_unreadable_summary_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"config_hash": ')
    res = run_cli([*FAST, f"hydra.run.dir={run}"], tmp_path)
    assert res.returncode == 2
    (line,) = error_lines(res.stderr)
    assert line.startswith(f"error: {run / 'summary.json'}: unreadable (") and "refusing to write" in line
    assert (run / "summary.json").read_text() == '{"config_hash": '


# ------------------------------------------------------------------------------- 4. unknown keys with +


@pytest.mark.parametrize(
    "override,message",
    [
        ("+stratgy=safe", "stratgy: no such config key or group"),
        ("+lora.unet_lora_rnk=4", "lora.unet_lora_rnk: no such key in lora (did you mean lora.unet_lora_rank?)"),
        ("+eval.models.dinov2=x", "eval.models.dinov2: no such key in eval.models (did you mean eval.models.dino?)"),
        ("+train.ema.decay=0.9", "train.ema: no such key in train"),
    ],
)
def test_a_key_added_with_plus_must_exist(override, message):
    from stylexfer.config import check_known_keys

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        check_known_keys(compose([override]))


def test_every_shipped_preset_has_only_known_keys():
    from stylexfer.config import check_known_keys

    for strategy in (None, *sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))):
        check_known_keys(compose([], strategy=strategy))  # raises on a key no schema declares


@pytest.mark.parametrize(
    "override,line",
    [
        ("+stratgy=safe", "error: stratgy: no such config key or group (did you mean strategy?)"),
        (
            "+lora.unet_lora_rnk=4",
            "error: lora.unet_lora_rnk: no such key in lora (did you mean lora.unet_lora_rank?)",
        ),
    ],
)
def test_the_cli_refuses_a_plus_typo_before_any_work(tmp_path, override, line):
    res = run_cli([override], tmp_path)
    assert res.returncode == 2
    assert error_lines(res.stderr) == [line]
    assert not (tmp_path / "experiments" / "default").exists() or not any(
        (tmp_path / "experiments" / "default").iterdir()
    )


def test_evaluate_refuses_a_plus_typo(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "stylexfer.evaluate", f"images={tmp_path}", "+eval.metrix=[hist]"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert error_lines(res.stderr) == ["error: eval.metrix: no such key in eval (did you mean eval.metrics?)"]


# ------------------------------------------------------------------------- 5. every shipped file checked


def test_the_shipped_manifests_match_the_shipped_files():
    from stylexfer.tools import seal_assets

    assert seal_assets.main(["--check"]) == 0
    for folder in seal_assets.SHIPPED.values():
        listed = set(json.loads((folder / store.FOLDER_MANIFEST).read_text()))
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert listed == on_disk - {store.FOLDER_MANIFEST}  # configs and tokenizer files too


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["scheduler/scheduler_config.json", "tokenizer/tokenizer.json", "model_index.json"])
def test_a_damaged_pocket_model_file_is_refused_naming_it(tmp_path, name):
    from stylexfer.embedded import POCKET_DIR, pocket_model_dir

    folder = tmp_path / "pocket"
    shutil.copytree(POCKET_DIR, folder)
    assert pocket_model_dir(folder) == folder
    folder2 = tmp_path / "pocket2"
    shutil.copytree(POCKET_DIR, folder2)
    _flip_a_byte(folder2 / name)
    with pytest.raises(ModelNotFoundError, match=f"{folder2}/{name}: sha256 differs from sha256.json"):
        pocket_model_dir(folder2)


def test_a_damaged_tiny_model_config_is_refused_naming_it(tmp_path, monkeypatch):
    from stylexfer import embedded

    folder = tmp_path / "tiny_sd"
    shutil.copytree(embedded.TINY_SD_DIR, folder)
    _flip_a_byte(folder / "unet.json")
    monkeypatch.setattr(embedded, "TINY_SD_DIR", folder)
    with pytest.raises(ModelNotFoundError, match=f"model=tiny: {folder}/unet.json: sha256 differs"):
        embedded.tiny_model_spec()


def test_a_damaged_judge_record_is_refused_naming_it(tmp_path):
    from stylexfer.world.judge import ASSETS, judge_record

    folder = tmp_path / "judge"
    shutil.copytree(ASSETS, folder)
    assert judge_record(folder)["sha256"]
    rec = json.loads((folder / "judge.json").read_text())
    rec["styles"] = list(reversed(rec["styles"]))  # an edit the weights' own sha256 would not see
    (folder / "judge.json").write_text(json.dumps(rec))
    with pytest.raises(ModelNotFoundError, match=f"{folder}/judge.json: sha256 differs from sha256.json"):
        judge_record(folder)


def test_a_model_folder_with_a_broken_json_is_refused_naming_the_file(tmp_path, tiny_dir):
    from omegaconf import OmegaConf

    from stylexfer.models import resolve_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    tok = folder / "tokenizer" / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[: tok.stat().st_size // 2])
    cfg = compose([f"model.path={folder}"]).model
    with pytest.raises(ModelNotFoundError, match=f"{tok}: not valid JSON"):
        resolve_model(OmegaConf.create(OmegaConf.to_container(cfg)), tmp_path / "store")


# ------------------------------------------------------------------------- 7. storage errors in one line


def test_a_store_that_cannot_be_written_ends_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = run_cli([*FAST, f"paths.cache_dir={tmp_path / 'file' / 'store'}"], tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    (line,) = error_lines(res.stderr)
    assert line.startswith(f"error: {tmp_path / 'file'}") and "(errno 20, ENOTDIR)" in line, line
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "experiments" / "default").exists() or not any(
        (tmp_path / "experiments" / "default").iterdir()
    )


def test_an_output_folder_that_cannot_be_made_ends_in_one_line(tmp_path):
    (tmp_path / "experiments").write_text("a file where the run folders go")
    res = run_cli(FAST, tmp_path)
    assert res.returncode == 1
    (line,) = error_lines(res.stderr)
    assert line.startswith("error: cannot create the run folder: experiments") and "errno" in line, line
    assert "Traceback" not in res.stderr


def test_a_write_that_fails_on_a_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch):
    """Every result file goes through one writer: a full disk at fsync leaves neither the file nor a temporary,
    and the error names the path and the errno in one line."""
    from stylexfer.errors import STORAGE_ERRNOS, os_error_line

    target = tmp_path / "run" / "summary.json"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(OSError) as e:
        store.atomic_write_json(target, {"status": "finished"})
    assert e.value.errno in STORAGE_ERRNOS
    assert list((tmp_path / "run").iterdir()) == []
    assert os_error_line(e.value) == f"{target}: No space left on device (errno 28, ENOSPC)"
