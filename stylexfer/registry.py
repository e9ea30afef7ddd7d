"""Plug-ins found by name: the evaluation suites (``eval.suite``) and the demo data source.

A plug-in is a ``"module:attribute"`` string, imported only when it is used, so the framework-free core
(configuration, data, the store, the stages, the run) names what it needs without importing a metric
model, a judge or the pocket world's renderer.

An evaluation suite is an object with two methods:

- ``preflight(ev, demo) -> {metric: why}``: check its weights before any work starts (raise
  :class:`stylexfer.errors.ModelNotFoundError` for what is missing and may not be skipped);
- ``scorer(ev, device, candidates, offline, skip) -> stylexfer.scoring.Scorer``: load its models once.
"""

from __future__ import annotations

import importlib

# eval.suite -> the suite object
SUITES = {"reference": "stylexfer.metrics:SUITE", "world": "stylexfer.world.metrics:SUITE"}

# the embedded demo's styles: write_demo(folder) writes them in the competition layout
DEMO_DATA = "stylexfer.world.dataset:write_demo"


def load(entry: str):
    """The object a ``"module:attribute"`` entry names."""
    module, attr = entry.split(":")
    return getattr(importlib.import_module(module), attr)


def suite(name) -> object:
    """The evaluation suite ``name`` (an :class:`stylexfer.config.EvalSuite` or its value)."""
    return load(SUITES[getattr(name, "value", name)])
