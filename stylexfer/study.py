"""An Optuna study kept in SQLite beside its sweep, without SQLAlchemy: :class:`SqliteStudy`.

The only released ``hydra-optuna-sweeper`` (1.3.0) pins optuna < 3, whose own SQLite storage (``sqlite:///…``,
through SQLAlchemy) fails under SQLAlchemy 2, which the MLflow logger needs. :class:`SqliteStudy` is optuna's
in-memory storage written through, after every change, to a SQLite file of two tables (Python's ``sqlite3``): a row
per study (name, directions, attributes) and a row per trial (its state, values, parameters with their
distributions, attributes and intermediate values, as JSON). Hydra's sweeper takes it as its ``storage``
(``experiments/hparams_search/recipe.yaml``, ``path: ${hydra.sweep.dir}/study.sqlite``).

Read a finished search back with optuna itself::

    optuna.load_study(study_name="search_recipe", storage=SqliteStudy("multirun/<date>/<time>/study.sqlite"))

Resume one: ``hydra.sweeper.storage.resume=multirun/<date>/<time>/study.sqlite`` starts the new sweep's study from
that file's trials (read only: the earlier sweep's file is left as it was), so the sampler goes on from what they
scored and ``hydra.sweeper.n_trials`` more are run. A trial a killed process left running is loaded as failed."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sqlite3
import threading
from pathlib import Path
from typing import Optional

from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY, directions TEXT NOT NULL, user_attrs TEXT NOT NULL, system_attrs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    study TEXT NOT NULL, number INTEGER NOT NULL, trial TEXT NOT NULL, PRIMARY KEY (study, number)
);
"""


def trial_json(t: FrozenTrial) -> str:
    """A trial as one JSON document (parameters in their distributions' internal representation)."""
    stamp = lambda d: d.isoformat() if d is not None else None  # noqa: E731
    return json.dumps(
        {
            "state": t.state.name,
            "values": t.values,
            "datetime_start": stamp(t.datetime_start),
            "datetime_complete": stamp(t.datetime_complete),
            "params": {k: t.distributions[k].to_internal_repr(v) for k, v in t.params.items()},
            "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
            "user_attrs": t.user_attrs,
            "system_attrs": t.system_attrs,
            "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
        }
    )


def trial_from_json(text: str) -> FrozenTrial:
    """The trial of :func:`trial_json`; one left running or waiting by a process that ended comes back failed."""
    d = json.loads(text)
    stamp = lambda s: dt.datetime.fromisoformat(s) if s else None  # noqa: E731
    dists = {k: json_to_distribution(v) for k, v in d["distributions"].items()}
    state = TrialState[d["state"]]
    values, complete = d["values"], stamp(d["datetime_complete"])
    if not state.is_finished():
        state, values, complete = TrialState.FAIL, None, dt.datetime.now()
    return FrozenTrial(
        number=0,  # numbered by the storage, in order
        state=state,
        value=None,
        values=values if state == TrialState.COMPLETE else None,
        datetime_start=stamp(d["datetime_start"]),
        datetime_complete=complete,
        params={k: dists[k].to_external_repr(v) for k, v in d["params"].items()},
        distributions=dists,
        user_attrs=d["user_attrs"],
        system_attrs=d["system_attrs"],
        intermediate_values={int(k): v for k, v in d["intermediate_values"].items()},
        trial_id=0,
    )


def read_rows(path: Path) -> list[tuple[tuple, list[str]]]:
    """((name, directions, user attrs, system attrs), [trial JSON in number order]) of each study in ``path``,
    opened read only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        studies = db.execute(
            "SELECT name, directions, user_attrs, system_attrs FROM studies ORDER BY rowid"
        ).fetchall()
        return [
            (s, [r[0] for r in db.execute("SELECT trial FROM trials WHERE study = ? ORDER BY number", (s[0],))])
            for s in studies
        ]
    finally:
        db.close()


def resume_problem(resume: Optional[str]) -> Optional[str]:
    """What is wrong with ``hydra.sweeper.storage.resume``, or None (no resume, or a file to resume from)."""
    if resume and not Path(resume).is_file():
        return f"hydra.sweeper.storage.resume={resume}: no such study file (a search's study.sqlite)"
    return None


def _then_save(name: str, save: str):
    """``InMemoryStorage.<name>``, then ``self.<save>`` of its first argument (the study's or the trial's id)."""
    base = getattr(InMemoryStorage, name)

    @functools.wraps(base)
    def method(self, ident: int, *args, **kwargs):
        out = base(self, ident, *args, **kwargs)
        getattr(self, save)(ident)
        return out

    return method


class SqliteStudy(InMemoryStorage):
    """Optuna's in-memory storage, each change written through to the SQLite file ``path`` (created at the first
    change); ``resume``: a study file whose studies and trials it starts from (read only). Single process: the
    sweeper asks and tells, the trials run elsewhere."""

    def __init__(self, path: str, resume: Optional[str] = None):
        super().__init__()
        self.path = Path(path)
        self._db: Optional[sqlite3.Connection] = None
        self._io = threading.Lock()
        self._loading = True
        try:
            if resume:
                problem = resume_problem(resume)
                if problem:
                    raise FileNotFoundError(problem)
                self._load(Path(resume))
            if self.path.is_file():
                self._load(self.path)
        finally:
            self._loading = False
        if resume:  # the new file holds what it started from
            for study_id in list(self._studies):
                self._save_study(study_id)
            for trial_id in list(self._trial_id_to_study_id_and_number):
                self._save_trial(trial_id)

    # ------------------------------------------------------------------ the file
    def _load(self, source: Path) -> None:
        for (name, directions, user_attrs, system_attrs), trials in read_rows(source):
            try:
                study_id = self.get_study_id_from_name(name)
            except KeyError:
                study_id = self.create_new_study(name)
                self.set_study_directions(study_id, [StudyDirection[x] for x in json.loads(directions)])
                for k, v in json.loads(user_attrs).items():
                    self.set_study_user_attr(study_id, k, v)
                for k, v in json.loads(system_attrs).items():
                    self.set_study_system_attr(study_id, k, v)
            have = len(self._studies[study_id].trials)
            for text in trials[have:]:
                self.create_new_trial(study_id, template_trial=trial_from_json(text))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.executescript(SCHEMA)
        return self._db

    def _save_study(self, study_id: int) -> None:
        if self._loading:
            return
        s = self._studies[study_id]
        row = (
            s.name,
            json.dumps([d.name for d in s.directions]),
            json.dumps(s.user_attrs),
            json.dumps(s.system_attrs),
        )
        self._write(("INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?)", row))

    def _save_trial(self, trial_id: int) -> None:
        if self._loading:
            return
        study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
        t = self._get_trial(trial_id)
        self._write(
            ("INSERT OR REPLACE INTO trials VALUES (?, ?, ?)", (self._studies[study_id].name, t.number, trial_json(t)))
        )

    def _write(self, *statements: tuple[str, tuple]) -> None:
        """Run ``statements`` ((sql, parameters) each) in one transaction."""
        with self._io:
            db = self._conn()
            with db:
                for sql, params in statements:
                    db.execute(sql, params)

    # ---------------------------------------------- changes written through (the others: after the class)
    def create_new_study(self, study_name: Optional[str] = None) -> int:
        study_id = super().create_new_study(study_name)
        self._save_study(study_id)
        return study_id

    def delete_study(self, study_id: int) -> None:
        name = self.get_study_name_from_id(study_id)
        super().delete_study(study_id)
        self._write(("DELETE FROM trials WHERE study = ?", (name,)), ("DELETE FROM studies WHERE name = ?", (name,)))

    def create_new_trial(self, study_id: int, template_trial: Optional[FrozenTrial] = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        self._save_trial(trial_id)
        return trial_id

    def __repr__(self) -> str:
        return f"SqliteStudy({self.path})"


# the other changes optuna makes, each written through after it: to the study's row, or to the trial's
for _name in ("set_study_directions", "set_study_user_attr", "set_study_system_attr"):
    setattr(SqliteStudy, _name, _then_save(_name, "_save_study"))
for _name in (
    "set_trial_state",
    "set_trial_param",
    "set_trial_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
):
    setattr(SqliteStudy, _name, _then_save(_name, "_save_trial"))
del _name
