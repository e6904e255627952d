"""A grid file's keys and values, checked before any kernel starts (distildp.runner.grids loads and expands it).

Its keys and their types are the fields of `GridFile`, checked by distildp.core.values. Then its values: parameter
types (the notebook's annotated `parameters` cell), method names, and every point's Settings, built as its notebook
builds them and checked by the library (distildp.pipeline.settings.make_settings, the checks a notebook's own call
makes: field types, with a hint for numbers YAML 1.1 reads as text such as 1e-5; accountant and other names;
dataset_options against the dataset loader's parameters; delta against the private training set's size N; csv
folders present). Every error is a GridError naming the grid file and the key.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from distildp.core import values
from distildp.runner import executors

CORE_AXES = ("method", "epsilon", "seed")


class GridError(ValueError):
    """The grid file is malformed; the message names the file and the key."""


def _key(default: Any, meaning: str) -> Any:
    return field(default=default, metadata={"meaning": meaning})


@dataclass
class GridFile:
    """A grid file's keys as written: their types are checked by distildp.core.values, and an error says what the
    key means (its `meaning`). An empty key (YAML's null) of a mapping or list is the key left out."""

    description: str = _key("", "free text: what the grid is for")
    profile: str = _key("quick", "the Settings profile every point starts from")
    notebook: str = _key("06_baselines.ipynb", "the notebook each point runs; relative names are in notebooks/")
    overrides: dict | None = _key(None, "Settings fields for every point, nested configs as mappings")
    axes: dict | None = _key(None, "axis -> list of values: method, epsilon, seed and any Settings field")
    references: list | None = _key(None, "the references run once per reference seed")
    reference_seeds: list | None = _key(None, "the seeds the references run at (default: the seed axis)")
    ablations: dict | None = _key(None, "label -> {values, method, epsilon, seeds, knob, with}: one knob at a time")
    regime_map: bool = _key(False, "whether the ablations are reported as a regime map (results.regime_table)")
    # what write_tables makes of the rows: perplexity tables, or the privacy audit (notebook 08's rows)
    report: Literal["ppl_vs_eps", "audit"] = _key("ppl_vs_eps", "the tables the rows make")
    # The order points are handed to the jobs: 'seed' (per seed, epsilon, then method), or 'method' (every point of
    # the first method, then the next, ...): the references always first, the ablations last.
    run_order: Literal["seed", "method"] = _key("seed", "the order the points run in")
    slurm: dict | None = _key(None, "the cluster jobs' settings (distildp.runner.executors.SlurmSettings)")


# An ablation's keys and their types: the knob's values (a point each, per method and seed), the Settings field it
# varies (default: the ablation's label; dotted for a nested field), the methods (and references) and epsilon it
# runs at, its seeds, and `with`: Settings fields fixed for all its points, or a list of them, one per value.
ABLATION_KEYS = {
    "values": list,
    "knob": str,
    "method": str | list,
    "epsilon": float,
    "seeds": list,
    "with": dict | list,
}


def read_grid_file(path: Path) -> GridFile:
    """The grid file's keys, each of its type (GridError naming the key if not); their values are checked later."""
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        keys = "profile, notebook, overrides, axes, references, ablations"
        raise GridError(f"{path}: (top level): must be a mapping of keys ({keys})")
    keys = [f.name for f in fields(GridFile)]
    for key in spec:
        if key not in keys:
            raise GridError(f"{path}: {key}: unknown key; the keys of a grid are {sorted(keys)}")
    problem = values.fields_problem(spec, GridFile)
    if problem:
        raise GridError(f"{path}: {problem.key}: {problem.message}")
    return GridFile(**spec)


@dataclass
class GridChecks:
    """The checks of one grid file's values, each raising GridError that names the file and the key."""

    path: Path
    profile: str
    notebook: Path
    base: dict  # the grid's overrides

    @classmethod
    def of(cls, path: Path, spec: GridFile, notebook: Path) -> GridChecks:
        """The checks of `spec`'s values (its notebook found at `notebook`), after checking its profile."""
        from distildp.pipeline.settings import PROFILES

        check = cls(path, spec.profile, notebook, spec.overrides or {})
        meaning = GridFile.__dataclass_fields__["profile"].metadata["meaning"]
        check.fail_on(values.problem("profile", spec.profile, Literal[tuple(sorted(PROFILES))], meaning))
        return check

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise GridError(f"{self.path}: {key}: {message}")

    def fail_on(self, problem: values.Problem | None) -> None:
        if problem:
            self.fail(problem.key, problem.message)

    def param(self, key: str, name: str, value: Any) -> Any:
        """`value` as the notebook's parameter `name` takes it (ints widened to floats), or GridError at `key`."""
        from distildp.teaching.notebooks import ParameterError, validate_parameters

        try:
            return validate_parameters(self.notebook, {name: value})[name]
        except ParameterError as err:
            self.fail(key, str(err))

    def setting_name(self, key: str, name: str) -> None:
        from distildp.pipeline.settings import check_setting_name

        try:
            check_setting_name(name)
        except ValueError as err:
            self.fail(key, f"{err}; axes other than {list(CORE_AXES)} and ablation knobs are Settings overrides")

    def method(self, key: str, method: str) -> None:
        from distildp.core.methods import check_method

        try:
            check_method(method, references=False)
        except ValueError as err:
            self.fail(key, str(err))

    def epsilon(self, key: str, epsilon: float) -> None:
        if not epsilon > 0:
            self.fail(key, f"{epsilon} must be > 0 (.inf for non-private)")

    def overrides(self, key: str, overrides: dict) -> None:
        """The Settings these overrides give, built and checked as the notebook's own make_settings call does."""
        from distildp.pipeline.settings import make_settings

        try:
            make_settings(self.profile, overrides)
        except (ValueError, TypeError, FileNotFoundError) as err:
            self.fail(key, f"overrides {overrides}: {err}")

    def axes(self, axes: dict | None) -> tuple[dict, list[str]]:
        """The axes, the core ones' values as the notebook takes them, each variant's overrides checked; and the
        axes other than the core ones (Settings fields)."""
        from distildp.pipeline.settings import dotted_override, merge_overrides

        axes = axes or {}
        for axis in CORE_AXES:
            if axis not in axes:
                self.fail(
                    f"axes.{axis}", "missing; every grid sweeps method, epsilon and seed (a one-value list is fine)"
                )
        for axis, axis_values in axes.items():
            if not isinstance(axis_values, list) or not axis_values:
                self.fail(f"axes.{axis}", "must be a non-empty list of values")
        checked = {
            axis: [self.param(f"axes.{axis}[{i}]", axis, v) if axis in CORE_AXES else v for i, v in enumerate(vs)]
            for axis, vs in axes.items()
        }
        for i, method in enumerate(checked["method"]):
            self.method(f"axes.method[{i}]", method)
        for i, epsilon in enumerate(checked["epsilon"]):
            self.epsilon(f"axes.epsilon[{i}]", epsilon)
        self.overrides("overrides", self.base)
        extra_axes = [a for a in checked if a not in CORE_AXES]
        for axis in extra_axes:
            self.setting_name(f"axes.{axis}", axis)
            for i, value in enumerate(checked[axis]):
                self.overrides(f"axes.{axis}[{i}]", merge_overrides(self.base, dotted_override(axis, value)))
        return checked, extra_axes

    def references(self, spec: GridFile, seeds: list[int]) -> tuple[list[str], list[int]]:
        """The references, and the seeds they run at (the seed axis unless the grid says otherwise)."""
        from distildp.core.methods import REFERENCES

        references = spec.references or []
        for i, ref in enumerate(references):
            if ref not in REFERENCES:
                self.fail(f"references[{i}]", f"{ref!r} is not a reference; choose from {list(REFERENCES)}")
        reference_seeds = seeds if spec.reference_seeds is None else spec.reference_seeds
        if not reference_seeds:
            self.fail("reference_seeds", "must be a non-empty list of ints (the seeds the references run at)")
        return references, [self.param(f"reference_seeds[{i}]", "seed", s) for i, s in enumerate(reference_seeds)]

    def ablation(self, label: str, given: Any, axes: dict) -> dict:
        """An ablation with its defaults filled in (knob, `with` per value, methods, epsilon, seeds), checked."""
        from distildp.pipeline.settings import dotted_override, merge_overrides

        where = f"ablations.{label}"
        if not isinstance(given, dict) or "values" not in given:
            self.fail(where, "must be a mapping with `values` (and optional method, epsilon, seeds, knob, with)")
        for key in given:
            if key not in ABLATION_KEYS:
                self.fail(f"{where}.{key}", f"unknown key; an ablation has {sorted(ABLATION_KEYS)}")
        self.fail_on(values.fields_problem(given, ABLATION_KEYS, f"{where}."))
        defaults = {"knob": label, "with": {}, "method": "distildp", "epsilon": axes["epsilon"][0]}
        abl = {**defaults, "seeds": [axes["seed"][0]], **given}
        self.setting_name(f"{where}.knob" if abl["knob"] != label else where, abl["knob"])
        if not abl["values"]:
            self.fail(f"{where}.values", "must be a non-empty list")
        abl["with"] = self.fixed(f"{where}.with", abl["with"], len(abl["values"]))
        abl["method"] = self.methods(f"{where}.method", abl["method"])
        abl["epsilon"] = self.param(f"{where}.epsilon", "epsilon", abl["epsilon"])
        self.epsilon(f"{where}.epsilon", abl["epsilon"])
        if not abl["seeds"]:
            self.fail(f"{where}.seeds", "must be a non-empty list of ints")
        abl["seeds"] = [self.param(f"{where}.seeds[{i}]", "seed", s) for i, s in enumerate(abl["seeds"])]
        for i, (value, fixed) in enumerate(zip(abl["values"], abl["with"])):
            fixed_and_value = merge_overrides(merge_overrides(self.base, fixed), dotted_override(abl["knob"], value))
            self.overrides(f"{where}.values[{i}]", fixed_and_value)
        return abl

    def fixed(self, key: str, fixed: dict | list, n_values: int) -> list[dict]:
        """An ablation's `with`, one mapping of Settings fields per value."""
        fixed = [fixed] * n_values if isinstance(fixed, dict) else fixed
        if len(fixed) != n_values or not all(isinstance(w, dict) for w in fixed):
            self.fail(
                key,
                "must be a mapping of Settings fields fixed for every point of this ablation, "
                f"or a list of {n_values} such mappings, one per value",
            )
        return fixed

    def methods(self, key: str, given: str | list) -> list[str]:
        """An ablation's methods (and references), as a list."""
        from distildp.core.methods import REFERENCES

        methods = given if isinstance(given, list) else [given]
        if not methods:
            self.fail(key, "must be a method or a non-empty list of methods and references")
        methods = [self.param(key, "method", m) for m in methods]
        for i, method in enumerate(methods):
            if method not in REFERENCES:
                self.method(key + (f"[{i}]" if len(methods) > 1 else ""), method)
        return methods

    def point(self, point_id: str, params: dict) -> dict:
        """A point's Settings and its notebook parameters (combinations of the above); the parameters as the
        notebook takes them."""
        from distildp.teaching.notebooks import ParameterError, validate_parameters

        where = f"point {point_id}"
        self.overrides(where, params["overrides"])
        try:
            return validate_parameters(self.notebook, params)
        except ParameterError as err:
            self.fail(where, str(err))

    def slurm(self, settings: dict | None) -> dict:
        """The cluster jobs' settings, checked by executors.check_slurm_settings."""
        try:
            return executors.check_slurm_settings(settings or {})
        except executors.SlurmSettingError as err:
            self.fail(f"slurm.{err.key}" if err.key else "slurm", err.message)
