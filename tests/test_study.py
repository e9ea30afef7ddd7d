"""stylexfer.study.SqliteStudy: an Optuna study kept in SQLite without SQLAlchemy (optuna < 3, as the sweeper pins),
read back by optuna itself, resumed from another file without touching it."""

from __future__ import annotations

import sqlite3

import pytest

optuna = pytest.importorskip("optuna", reason='the search extra: pip install -e ".[search]"')

from optuna.trial import TrialState  # noqa: E402

from stylexfer.study import SqliteStudy  # noqa: E402


def objective(trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    rank = trial.suggest_int("rank", 4, 64, log=True)
    kind = trial.suggest_categorical("kind", ["lora", "dora"])
    trial.set_user_attr("run", f"job-{trial.number}")
    trial.report(x * 2, step=0)
    return -((x - 1) ** 2) + (kind == "lora") + rank / 100


def new_study(path, seed=0, resume=None):
    return optuna.create_study(
        study_name="s",
        storage=SqliteStudy(str(path), resume=str(resume) if resume else None),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3),
        direction="maximize",
        load_if_exists=True,
    )


def summary(trials):
    return [(t.number, t.state, t.value, t.params, t.user_attrs, t.intermediate_values) for t in trials]


def test_a_study_reads_back_from_its_file_and_a_trial_left_running_comes_back_failed(tmp_path):
    path = tmp_path / "study.sqlite"
    study = new_study(path)
    study.optimize(objective, n_trials=6)
    study.ask()  # asked and never told: what a killed sweeper leaves
    again = optuna.load_study(study_name="s", storage=SqliteStudy(str(path)))
    assert summary(again.trials[:6]) == summary(study.trials[:6])
    assert again.trials[6].state == TrialState.FAIL and again.trials[6].values is None
    assert (again.best_trial.number, again.best_value) == (study.best_trial.number, study.best_value)
    assert again.direction == optuna.study.StudyDirection.MAXIMIZE
    db = sqlite3.connect(path)  # a plain SQLite file: one row per trial
    assert db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 7
    assert db.execute("SELECT name FROM studies").fetchall() == [("s",)]


def test_a_resumed_study_starts_from_the_old_trials_and_leaves_their_file_as_it_was(tmp_path):
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    first = new_study(old)
    first.optimize(objective, n_trials=5)
    before = old.read_bytes()
    resumed = new_study(new, seed=1, resume=old)
    assert summary(resumed.trials) == summary(first.trials)
    resumed.optimize(objective, n_trials=3)
    assert old.read_bytes() == before
    back = optuna.load_study(study_name="s", storage=SqliteStudy(str(new)))
    assert [t.number for t in back.trials] == list(range(8))
    assert summary(back.trials[:5]) == summary(first.trials)
    assert all(t.state == TrialState.COMPLETE for t in back.trials)
    assert back.best_value == max(t.value for t in back.trials)


def test_nothing_is_written_before_the_first_change_and_a_missing_resume_file_says_so(tmp_path):
    SqliteStudy(str(tmp_path / "later" / "study.sqlite"))
    assert not (tmp_path / "later").exists()
    with pytest.raises(FileNotFoundError, match="hydra.sweeper.storage.resume=.*nope.sqlite: no such study file"):
        SqliteStudy(str(tmp_path / "x.sqlite"), resume=str(tmp_path / "nope.sqlite"))
