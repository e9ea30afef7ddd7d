"""Every config option and strategy composes; typos and out-of-range values fail naming the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers import CONF, compose
from stylexfer.config import validate
from stylexfer.errors import ConfigError

GROUPS = ["backend", "model", "lora", "prior", "augmentation", "init", "scheduler", "train", "data", "eval"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose([f"{group}={option}"])
    OmegaConf.resolve(cfg.model)  # no dangling interpolation in the option itself
    validate(cfg)
    assert OmegaConf.select(cfg, group) is not None


def test_groups_have_the_options_the_recipe_needs():
    assert set(options("model")) >= {"tiny", "sd21", "sd21_base"}
    assert set(options("prior")) >= {"none", "shared", "per_style", "self"}
    assert set(options("augmentation")) >= {"none", "crop", "crop_flip", "full"}
    assert set(options("init")) >= {"noise", "avg_image"}
    assert set(options("scheduler")) >= {"ddim", "dpmpp", "euler_a", "pndm"}
    assert set(options("strategy")) == {"baseline", "safe", "aggressive"}


@pytest.mark.parametrize("strategy", options("strategy"))
def test_every_strategy_composes_and_validates(strategy):
    cfg = compose(strategy=strategy)
    validate(cfg)
    assert cfg.name == strategy
    assert (CONF / "strategy" / f"{strategy}.yaml").read_text().startswith("# @package _global_")


ABLATIONS = sorted(
    p.stem
    for p in (CONF.parent / "experiments" / "ablation").glob("*.yaml")
    if p.stem not in ("report_table", "injection")  # tables of rows × seeds: tested below
)


def test_ablation_presets_cover_the_reports_studies():
    assert set(ABLATIONS) >= {
        "unet_lora_rank",
        "text_encoder_lora_rank",
        "prior_weight",
        "init_strength",
        "augmentation",
    }


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_preset_composes_with_a_sweep(name):
    cfg = compose([f"+ablation={name}"], hydra=True)
    params = dict(cfg.hydra.sweeper.params)
    seeds = params.pop("train.seed", None)  # an ablation over seeds too: one more swept key, the seeds
    assert len(params) == 1 and (seeds is None or len(seeds.split(",")) >= 3)
    ((key, values),) = params.items()
    assert len(values.split(",")) >= 3
    for v in values.split(","):  # each job's config composes and validates
        validate(compose([f"+ablation={name}", f"{key}={v}"]))
    assert cfg.lora.unet_lora_rank == 32 or key == "lora.unet_lora_rank"  # built on the safe strategy
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")


@pytest.mark.parametrize("launcher", ["slurm_gpu", "ray_gpu"])
def test_cluster_launcher_presets_name_one_gpu_per_job(launcher):
    text = (CONF / "hydra" / "launcher" / f"{launcher}.yaml").read_text()
    assert ("gpus_per_node: 1" in text) if launcher == "slurm_gpu" else ("num_gpus: 1" in text)
    if launcher == "slurm_gpu":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
        cfg = compose([f"hydra/launcher={launcher}"], hydra=True)
        assert cfg.hydra.launcher.gpus_per_node == 1 and "Slurm" in cfg.hydra.launcher._target_


def test_safe_strategy_is_the_reference_recipe():
    c = compose(strategy="safe")
    assert c.data.instance_prompt == "an image of {object} in style_{style}" == c.data.prompt
    assert list(c.lora.unet_target_modules) == ["to_q", "to_k", "to_v", "to_out.0"]
    assert (c.lora.unet_lora_rank, c.lora.text_encoder_lora_rank) == (32, 0)
    assert (c.prior.mode.value, c.prior.weight) == ("shared", 1.0)
    assert (c.augmentation.scale, c.augmentation.random_crop, c.augmentation.hflip, c.augmentation.rotation) == (
        1.04,
        True,
        False,
        0.0,
    )
    assert (c.init.mode.value, c.init.strength) == ("avg_image", 0.9)
    assert (c.scheduler.steps, c.scheduler.guidance_scale) == (40, 7.5)
    assert (c.train.steps, c.train.lr, c.train.lr_scheduler.value) == (800, 1e-4, "constant")


def test_aggressive_and_baseline_strategies():
    a = compose(strategy="aggressive")
    assert (a.lora.unet_lora_rank, a.lora.text_encoder_lora_rank, a.lora.text_encoder_lr_scale) == (64, 8, 0.1)
    assert (a.prior.weight, a.train.steps) == (0.9, 1200)
    assert a.augmentation.hflip and a.augmentation.rotation > 0
    b = compose(strategy="baseline")
    assert (b.lora.unet_lora_rank, b.train.steps, b.train.lr) == (4, 500, 1e-4)
    assert b.prior.mode.value == "none" and b.init.mode.value == "noise"
    assert b.scheduler.steps == 25 and b.data.instance_prompt == "style_{style}" == b.data.prompt
    assert b.augmentation.scale == 1.0


def test_sd21_models_point_at_the_hub_ids():
    assert compose(["model=sd21"]).model.path == "stabilityai/stable-diffusion-2-1"
    assert compose(["model=sd21_base"]).model.path == "stabilityai/stable-diffusion-2-1-base"
    assert compose(["model=sd21"]).model.resolution == 512


@pytest.mark.parametrize(
    "override,needle",
    [
        ("lora.unet_rnk=4", "unet_rnk"),
        ("train.steps=many", "train.steps"),
        ("prior.mode=sometimes", "prior.mode"),
        ("scheduler.name=heun9", "scheduler.name"),
    ],
)
def test_typos_and_wrong_types_fail_at_compose_naming_the_key(override, needle):
    with pytest.raises(Exception) as e:
        compose([override])
    assert needle in str(e.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("lora.unet_lora_rank=0", "lora.unet_lora_rank"),
        ("lora.text_encoder_lora_rank=-1", "lora.text_encoder_lora_rank"),
        ("init.strength=1.5", "init.strength"),
        ("init.strength=0", "init.strength"),
        ("train.steps=-1", "train.steps"),
        ("train.lr=-1", "train.lr"),
        ("prior.weight=-0.5", "prior.weight"),
        ("augmentation.scale=0.9", "augmentation.scale"),
        ("model.resolution=100", "model.resolution"),
        ("eval.metrics=[hist,bogus]", "eval.metrics"),
        ("data.prompt='{thing} in style'", "data.prompt"),
        ("model.dtype=float8", "model.dtype"),
    ],
)
def test_out_of_range_values_fail_validation_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg


def test_the_card_names_the_rank_keys_and_the_old_names_fail_naming_the_new_ones(cli, tmp_path):
    cfg = compose(strategy="aggressive")
    assert (cfg.lora.unet_lora_rank, cfg.lora.text_encoder_lora_rank) == (64, 8)
    assert "unet_rank" not in cfg.lora and "text_encoder_rank" not in cfg.lora
    for old, new in (
        ("lora.unet_rank=4", "lora.unet_lora_rank"),
        ("lora.text_encoder_rank=2", "lora.text_encoder_lora_rank"),
    ):
        res = cli([old], tmp_path)
        assert res.returncode == 2
        (line,) = res.stderr.strip().splitlines()
        assert line == f"error: {old.split('=')[0]} was renamed: use {new} (as in {new}={old.split('=')[1]})"
    res = cli(["-m", "lora.unet_rank=4,16"], tmp_path)  # a sweep too, before any job starts
    assert res.returncode == 2 and "use lora.unet_lora_rank" in res.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "experiments").exists()


def test_the_backend_is_a_config_group_and_an_unknown_one_fails_naming_the_key():
    cfg = compose()
    assert cfg.backend.name == "torch"
    with pytest.raises(ConfigError, match=r"^backend.name=nope: unknown; known: \['jittor', 'torch'\]"):
        validate(compose(["backend.name=nope"]))


def test_the_framework_free_modules_import_no_framework():
    """The backend boundary: config, data, store, stages, run, compare and report import neither torch nor
    diffusers; only stylexfer.backends.<name> (and the metrics' judge models) do."""
    import subprocess
    import sys

    code = (
        "import sys; import stylexfer.run, stylexfer.train, stylexfer.sample, stylexfer.prior, stylexfer.compare, "
        "stylexfer.report, stylexfer.store, stylexfer.data, stylexfer.backends; "
        "bad = [m for m in ('torch', 'diffusers', 'peft') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_report_table_preset_is_three_strategies_and_single_changes_to_safe_with_three_seeds():
    """+ablation=report_table: each row (experiments/report/) is a strategy, or the safe strategy with exactly
    one of the report's changes undone, or safe untrained; 3 seeds each, sampling seed = training seed."""
    from omegaconf import OmegaConf

    cfg = compose(["+ablation=report_table"], hydra=True)
    params = dict(cfg.hydra.sweeper.params)
    rows = params["+report"].split(",")
    assert params["train.seed"] == "0,1,2" and len(rows) == 10
    assert sorted(rows) == sorted(p.stem for p in (CONF.parent / "experiments" / "report").glob("*.yaml"))

    def flat(row):
        c = compose(["+ablation=report_table", f"+report={row}", "train.seed=1"])
        validate(c)
        assert c.sample.seed == 1
        d = {
            g: OmegaConf.to_container(c[g], resolve=True, enum_to_str=True) if OmegaConf.is_config(c[g]) else c[g]
            for g in c
            if g != "paths"
        }
        return {f"{g}.{k}": v for g, sub in d.items() if isinstance(sub, dict) for k, v in sub.items()}

    safe = flat("safe")
    assert flat("baseline")["lora.unet_lora_rank"] == 4 and flat("aggressive")["lora.unet_lora_rank"] == 64
    untrained = flat("untrained")
    assert untrained["train.steps"] == 0 and {k for k, v in untrained.items() if safe.get(k) != v} == {"train.steps"}
    changed = {
        row: sorted(k for k, v in flat(row).items() if safe.get(k) != v) for row in rows if row.startswith("safe_")
    }
    assert changed == {
        "safe_bare_prompt": ["data.instance_prompt", "data.prompt"],
        "safe_rank4": ["lora.unet_lora_rank"],
        "safe_no_prior": ["prior.mode"],
        "safe_no_crop": ["augmentation.name", "augmentation.random_crop", "augmentation.scale"],
        "safe_noise_init": ["init.mode", "init.strength"],
        "safe_strength_07": ["init.strength"],
    }


def rows_of_seeded_table(ablation: str, group: str) -> list[str]:
    """The rows of an ablation preset that sweeps ``+<group>`` (every file of experiments/<group>/) × seeds 0-2."""
    params = dict(compose([f"+ablation={ablation}"], hydra=True).hydra.sweeper.params)
    rows = params[f"+{group}"].split(",")
    assert set(params) == {f"+{group}", "train.seed"} and params["train.seed"] == "0,1,2"
    assert {p.stem for p in (CONF.parent / "experiments" / group).glob("*.yaml")} == set(rows)
    return rows


def test_the_injection_table_rows_are_the_safe_strategy_with_or_without_injection():
    """+ablation=injection: rows (experiments/injection/) × 3 seeds; every row is built on the safe strategy."""
    for row in rows_of_seeded_table("injection", "injection"):
        c = compose(["+ablation=injection", f"+injection={row}", "train.seed=1"])
        validate(c)
        assert c.lora.unet_lora_rank == 32 and c.sample.seed == 1
        assert (c.inject.mode.value == "styleid") == (row != "safe")
    assert compose(["+ablation=injection", "+injection=styleid_untrained"]).train.steps == 0


def test_the_control_table_rows_are_the_safe_strategy_with_or_without_control_prior_and_injection():
    """+ablation=control: rows (experiments/structure/) × 3 seeds; every row is the safe strategy, its name says
    what it adds (control, no prior, injection) and its config does exactly that."""
    for row in rows_of_seeded_table("control", "structure"):
        c = compose(["+ablation=control", f"+structure={row}", "train.seed=2"])
        validate(c)
        assert c.lora.unet_lora_rank == 32 and c.train.steps == 800 and c.sample.seed == 2
        assert (c.control.mode.value == "canny") == ("control" in row)
        assert (c.prior.mode.value == "none") == ("no_prior" in row)
        assert (c.inject.mode.value == "styleid") == ("styleid" in row)
        assert c.control.scale == (0.5 if row.endswith("_05") else 1.0)
        assert c.control.blur == (2.0 if "blur" in row else 0.0)
