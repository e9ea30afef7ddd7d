"""Searches (``+hparams_search=...``: Hydra's Optuna sweeper): the search space checked before any trial runs.

:class:`CheckSearch` is a Hydra callback the presets install. At the start of the multirun, before the sweeper
parses its ``params``, each searched key is parsed as Hydra's sweeper does, its range checked (not empty; a log
range above 0) and its ends or choices set into the composed config and validated as a run's would be; the first
problem ends the command in one line naming ``hydra.sweeper.params.<key>``, exit 2, before a folder is made; so does
a ``hydra.sweeper.storage.resume`` study file that does not exist (:mod:`stylexfer.study`)."""

from __future__ import annotations

import copy
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import validate
from .errors import first_line


def search_problem(cfg: DictConfig) -> str | None:
    """The first problem of an Optuna search space in the composed multirun config ``cfg``, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweeper = cfg.hydra.sweeper
    if "optuna" not in str(sweeper.get("_target_", "")):
        return None
    storage = sweeper.get("storage")
    if isinstance(storage, DictConfig) and storage.get("resume"):
        from .study import resume_problem

        problem = resume_problem(storage.resume)
        if problem:
            return problem
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    parser = OverridesParser.create()
    for key, text in (sweeper.get("params") or {}).items():
        where = f"hydra.sweeper.params.{key}={text}"
        try:
            space = parser.parse_override(f"{key}={text}").value()
        except Exception as e:  # noqa: BLE001 - Hydra's grammar errors, said in one line
            return f"{where}: not a search range ({first_line(e)})"
        if isinstance(space, IntervalSweep):
            low, high = space.start, space.end
            if not low < high:
                return f"{where}: an empty range (low {low} is not below high {high})"
            if "log" in (space.tags or set()) and low <= 0:
                return f"{where}: a log range must be above 0 (low {low})"
            values = [low, high]
        elif isinstance(space, ChoiceSweep):
            values = list(space.list)
        elif isinstance(space, RangeSweep):
            values = list(space.range()) if hasattr(space, "range") else [space.start]
        else:
            values = [space]
        if not values:
            return f"{where}: an empty range (nothing to choose from)"
        for v in values:
            trial = copy.deepcopy(job)
            try:
                OmegaConf.update(trial, key, v, merge=True)
                validate(trial)
            except Exception as e:  # noqa: BLE001 - a type or range error of the run's config
                return f"{where}: {v!r} is not a value of {key} ({first_line(e)})"
    return None


class CheckSearch(Callback):
    """Refuse a search whose space is empty or does not fit the config, before any trial (``hydra.callbacks``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        problem = search_problem(config)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)
