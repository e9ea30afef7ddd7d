"""``+hparams_search=recipe``: an Optuna search over the recipe through Hydra's sweeper, read back by compare."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import compose, run_cli

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='the search extra: pip install -e ".[search]"')


def test_the_search_preset_composes_with_its_space_and_direction():
    cfg = compose(["+hparams_search=recipe"], hydra=True)
    sw = cfg.hydra.sweeper
    assert "optuna" in sw._target_ and sw.direction == "maximize" and sw.n_trials == 20
    assert set(sw.params) == {"lora.unet_lora_rank", "train.lr", "prior.weight", "init.strength", "train.steps"}
    assert sw.params["train.lr"] == "tag(log, interval(2e-5, 5e-4))"
    assert cfg.lora.unet_lora_rank == 32  # the safe strategy underneath


@pytest.mark.parametrize(
    "key, space, says",
    [
        ("train.lr", "interval(5e-4, 2e-5)", "an empty range (low 0.0005 is not below high 2e-05)"),
        ("train.lr", "tag(log, interval(0, 1e-3))", "a log range must be above 0 (low 0"),
        ("lora.unet_lora_rank", "interval(2.5, 8.5)", "2.5 is not a value of lora.unet_lora_rank (Value '2.5'"),
        (
            "lora.unet_lora_rank",
            "choice(0, 4)",
            "0 is not a value of lora.unet_lora_rank (lora.unet_lora_rank=0: must",
        ),
        ("init.strength", "interval(0.5, 1.5)", "1.5 is not a value of init.strength (init.strength=1.5:"),
        ("lora.unet_rnk", "choice(4, 8)", "4 is not a value of lora.unet_rnk ("),
        ("train.steps", "choice(200, oops(1))", "not a search range ("),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_key(key, space, says):
    from omegaconf import open_dict

    from stylexfer.search import search_problem

    cfg = compose(["+hparams_search=recipe"], hydra=True)
    assert search_problem(cfg) is None  # the shipped space is good
    with open_dict(cfg):
        cfg.hydra.sweeper.params[key] = space
    problem = search_problem(cfg)
    assert problem is not None and problem.startswith(f"hydra.sweeper.params.{key}={space}: {says}"), problem


def test_the_cli_refuses_a_bad_space_before_any_trial_in_one_line(tmp_path):
    sweep = tmp_path / "search"
    args = ["-m", "+hparams_search=recipe", 'hydra.sweeper.params={train.lr:"interval(5e-4,2e-5)"}']
    res = run_cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and lines == [
        "error: hydra.sweeper.params.train.lr=interval(5e-4,2e-5): an empty range (low 0.0005 is not below high 2e-05)"
    ]
    assert not sweep.exists()


@pytest.mark.slow
def test_a_four_trial_search_ends_with_its_best_trial_and_compare_reads_it(tmp_path, cache_dir):
    sweep = tmp_path / "search"
    args = ["-m", "+hparams_search=recipe", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1", "train.steps=2"]
    args += ["data.max_objects=2", "prior=none", "scheduler.steps=2", "data.styles=[00]", f"hydra.sweep.dir={sweep}"]
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    finals = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        finals[job.name] = json.loads((job / "summary.json").read_text())["scores"]["final"]
    assert len(finals) == 4 and all(isinstance(v, float) for v in finals.values())
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(finals.values()), abs=1e-12)

    def matches(job: str) -> bool:
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        values = dict(o.split("=", 1) for o in overrides)
        return all(float(values[k]) == pytest.approx(float(v)) for k, v in best["best_params"].items())

    (winner,) = [j for j in finals if matches(j)]  # the trial Optuna calls best is the one with the highest score
    assert finals[winner] == max(finals.values())
    from stylexfer.compare import main as compare_main

    assert compare_main([str(sweep)]) in (0, None)
    table = (sweep / "compare.md").read_text()
    star = [line for line in table.splitlines() if line.startswith("| ★ |")]
    assert len(star) == 1 and f"| {winner} |" in star[0]
    assert (sweep / "plot_train-lr_final.png").is_file() and (sweep / "plot_lora-unet_lora_rank_final.png").is_file()
    # the study itself, in SQLite beside the trials: optuna reads it back with the same four scores and best trial
    import optuna

    from stylexfer.study import SqliteStudy

    study = optuna.load_study(study_name="search_recipe", storage=SqliteStudy(str(sweep / "study.sqlite")))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(finals.values()), abs=1e-12)
    assert study.best_value == pytest.approx(best["best_value"], abs=1e-12)


def test_a_resume_file_that_does_not_exist_is_refused_naming_the_key(tmp_path):
    from stylexfer.search import search_problem

    missing = tmp_path / "nope.sqlite"
    cfg = compose(["+hparams_search=recipe", f"hydra.sweeper.storage.resume={missing}"], hydra=True)
    assert (
        search_problem(cfg) == f"hydra.sweeper.storage.resume={missing}: no such study file (a search's study.sqlite)"
    )


@pytest.mark.slow
def test_a_search_resumed_from_another_ones_study_goes_on_from_its_trials_and_leaves_its_file(tmp_path, cache_dir):
    import optuna

    from stylexfer.study import SqliteStudy

    base = ["-m", "+hparams_search=recipe", "hydra.sweeper.n_jobs=1", "train.steps=2", "data.max_objects=2"]
    base += ["prior=none", "scheduler.steps=2", "data.styles=[00]"]
    first, second = tmp_path / "first", tmp_path / "second"
    res = run_cli([*base, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={first}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    before = (first / "study.sqlite").read_bytes()
    resume = f"hydra.sweeper.storage.resume={first / 'study.sqlite'}"
    res = run_cli([*base, "hydra.sweeper.n_trials=1", resume, f"hydra.sweep.dir={second}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (first / "study.sqlite").read_bytes() == before
    load = lambda d: optuna.load_study(study_name="search_recipe", storage=SqliteStudy(str(d / "study.sqlite")))  # noqa: E731
    old, new = load(first), load(second)
    assert [t.params for t in new.trials[:2]] == [t.params for t in old.trials]
    assert len(new.trials) == 3 and all(t.state.name == "COMPLETE" for t in new.trials)
    assert sorted(p.name for p in second.iterdir() if p.name.isdigit()) == ["0"]  # one new trial ran
