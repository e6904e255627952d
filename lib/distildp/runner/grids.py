"""A grid file (benchmarks/grids/*.yaml), checked and expanded into the points `run.py` runs.

The whole grid is checked before any kernel starts: keys, parameter types (the notebook's annotated
`parameters` cell), method names, and every point's Settings, built as its notebook builds them and checked
by the library (distildp.pipeline.settings.make_settings, the checks a notebook's own call makes: field types, with a
hint for numbers YAML 1.1 reads as text such as 1e-5; accountant and other names; dataset_options against the
dataset loader's parameters; delta against the private training set's size N; csv folders present). Every
error names the grid file and the key. A profile's dataset_options that the grid's dataset does not take
(smoke's n_train with dataset: csv:...) are left out, with a note; the grid's own are refused.

Keys: description, profile, notebook, overrides (Settings fields for every point), axes (method, epsilon, seed and any
Settings field: their product is the main points), references, reference_seeds, ablations (one knob varied at a
time, with `with` fixing others), regime_map, report, run_order (RUN_ORDERS), slurm (the cluster jobs' settings,
lib/distildp/runner/executors.py).
"""

from __future__ import annotations

import itertools
import math
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distildp.runner import executors

ROOT = Path(__file__).resolve().parents[3]
GRIDS_DIR = ROOT / "benchmarks" / "grids"
NOTEBOOKS_DIR = ROOT / "notebooks"

TOP_KEYS = {
    "description",
    "profile",
    "notebook",
    "overrides",
    "axes",
    "references",
    "reference_seeds",
    "ablations",
    "regime_map",
    "report",
    "run_order",
    "slurm",
}
REPORTS = ("ppl_vs_eps", "audit")
# The order points are handed to the jobs: 'seed' (per seed, epsilon, then method), or 'method' (every point of the
# first method, then the next, ...): the references always first, the ablations last.
RUN_ORDERS = ("seed", "method")  # what write_tables makes of the rows: perplexity tables, or the privacy audit
CORE_AXES = ("method", "epsilon", "seed")
ABLATION_KEYS = {"values", "method", "epsilon", "seeds", "knob", "with"}


class GridError(ValueError):
    """The grid file is malformed; the message names the file and the key."""


@dataclass
class Point:
    """One notebook run: its parameters (without store/row_path) and how it reads in the tables."""

    point_id: str
    kind: str  # 'main' | 'reference' | 'ablation'
    params: dict
    variant: str = ""  # the grid's other axes, e.g. 'dataset-yelp'
    knob: str | None = None
    value: Any = None
    same_as: str | None = None  # an ablation value that IS the grid's setting: reuse that main point's row


@dataclass
class Grid:
    name: str
    path: Path
    notebook: Path
    points: list[Point] = field(default_factory=list)
    regime_map: bool = False  # report the ablations as a regime map (results.regime_table)
    report: str = "ppl_vs_eps"  # 'audit': the rows are notebook 08's (distildp.audit.method_audit.write_audit_report)
    notes: list[str] = field(default_factory=list)  # what the checks adjusted (e.g. a profile's options left out)
    slurm: dict = field(default_factory=dict)  # the cluster jobs' settings (executors.SLURM_SETTINGS)


# ---------------------------------------------------------------------------------------------- grid files
def grid_path(name_or_path: str) -> Path:
    """A grid name (benchmarks/grids/<name>.yaml) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise FileNotFoundError(f"grid file {path} does not exist")
        return path.resolve()
    path = GRIDS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no grid {name_or_path!r}: expected {path}; grids are {known} or a .yaml path")
    return path


def load_grid(name_or_path: str) -> Grid:
    """Read, expand and check a grid file; raise GridError (naming file and key) before anything runs.

    Every point's Settings are built as its notebook builds them and checked by the library (Settings, and
    Settings.validate for delta against the private set's size); the library's warnings become `Grid.notes`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        grid = _load_grid(name_or_path)
    grid.notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for w in caught:  # anything else goes on as usual
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return grid


def _load_grid(name_or_path: str) -> Grid:
    from distildp.core.methods import REFERENCES
    from distildp.pipeline.settings import PROFILES, check_setting_name, dotted_override, merge_overrides
    from distildp.teaching.notebooks import ParameterError, validate_parameters

    path = grid_path(name_or_path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML ({err})") from err

    def fail(key: str, message: str) -> typing.NoReturn:
        raise GridError(f"{path}: {key}: {message}")

    if not isinstance(spec, dict):
        fail("(top level)", "must be a mapping of keys (profile, notebook, overrides, axes, references, ablations)")
    for key in spec:
        if key not in TOP_KEYS:
            fail(key, f"unknown key; the keys of a grid are {sorted(TOP_KEYS)}")
    profile = spec.get("profile", "quick")
    if profile not in PROFILES:
        fail("profile", f"{profile!r} is not a profile; choose one of {sorted(PROFILES)}")
    notebook = Path(spec.get("notebook", "06_baselines.ipynb"))
    notebook = notebook if notebook.is_absolute() else NOTEBOOKS_DIR / notebook
    if not notebook.exists():
        fail("notebook", f"{notebook} does not exist (relative names are looked up in {NOTEBOOKS_DIR})")
    base = spec.get("overrides") or {}
    if not isinstance(base, dict):
        fail("overrides", "must be a mapping of Settings fields")
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict):
        fail("axes", "must be a mapping axis -> list of values")
    for axis in CORE_AXES:
        if axis not in axes:
            fail(f"axes.{axis}", "missing; every grid sweeps method, epsilon and seed (a one-value list is fine)")
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            fail(f"axes.{axis}", "must be a non-empty list of values")

    def check_param(key: str, name: str, value: Any) -> Any:
        try:
            return validate_parameters(notebook, {name: value})[name]
        except ParameterError as err:
            fail(key, str(err))

    def check_name(key: str, name: str) -> None:
        try:
            check_setting_name(name)
        except ValueError as err:
            fail(key, f"{err}; axes other than {list(CORE_AXES)} and ablation knobs are Settings overrides")

    checked_axes = {
        axis: [check_param(f"axes.{axis}[{i}]", axis, v) if axis in CORE_AXES else v for i, v in enumerate(values)]
        for axis, values in axes.items()
    }
    for i, method in enumerate(checked_axes["method"]):
        _check_method(method, f"axes.method[{i}]", fail)
    for i, epsilon in enumerate(checked_axes["epsilon"]):
        if not epsilon > 0:
            fail(f"axes.epsilon[{i}]", f"{epsilon} must be > 0 (.inf for non-private)")
    _check_overrides(profile, base, "overrides", fail)
    extra_axes = [a for a in checked_axes if a not in CORE_AXES]
    for axis in extra_axes:
        check_name(f"axes.{axis}", axis)
        for i, value in enumerate(checked_axes[axis]):
            _check_overrides(profile, merge_overrides(base, dotted_override(axis, value)), f"axes.{axis}[{i}]", fail)

    references = spec.get("references") or []
    if not isinstance(references, list):
        fail("references", f"must be a list of {list(REFERENCES)}")
    for i, ref in enumerate(references):
        if ref not in REFERENCES:
            fail(f"references[{i}]", f"{ref!r} is not a reference; choose from {list(REFERENCES)}")
    reference_seeds = spec.get("reference_seeds", checked_axes["seed"])
    if not isinstance(reference_seeds, list) or not reference_seeds:
        fail("reference_seeds", "must be a non-empty list of ints (the seeds the references run at)")
    reference_seeds = [check_param(f"reference_seeds[{i}]", "seed", s) for i, s in enumerate(reference_seeds)]

    ablations = spec.get("ablations") or {}
    if not isinstance(ablations, dict):
        fail("ablations", "must be a mapping knob -> {values, method, epsilon, seeds}")
    for label, abl in ablations.items():
        where = f"ablations.{label}"
        if not isinstance(abl, dict) or "values" not in abl:
            fail(where, "must be a mapping with `values` (and optional method, epsilon, seeds, knob, with)")
        for key in abl:
            if key not in ABLATION_KEYS:
                fail(f"{where}.{key}", f"unknown key; an ablation has {sorted(ABLATION_KEYS)}")
        abl.setdefault("knob", label)
        check_name(f"{where}.knob" if abl["knob"] != label else where, abl["knob"])
        if not isinstance(abl["values"], list) or not abl["values"]:
            fail(f"{where}.values", "must be a non-empty list")
        # `with`: Settings fields fixed for every point of this ablation, or a list of them, one per value
        abl.setdefault("with", {})
        if isinstance(abl["with"], dict):
            abl["with"] = [abl["with"]] * len(abl["values"])
        if (
            not isinstance(abl["with"], list)
            or len(abl["with"]) != len(abl["values"])
            or not all(isinstance(w, dict) for w in abl["with"])
        ):
            fail(
                f"{where}.with",
                "must be a mapping of Settings fields fixed for every point of this ablation, "
                f"or a list of {len(abl['values'])} such mappings, one per value",
            )
        abl.setdefault("method", "distildp")
        abl.setdefault("epsilon", checked_axes["epsilon"][0])
        abl.setdefault("seeds", [checked_axes["seed"][0]])
        methods = abl["method"] if isinstance(abl["method"], list) else [abl["method"]]
        if not methods:
            fail(f"{where}.method", "must be a method or a non-empty list of methods and references")
        abl["method"] = [check_param(f"{where}.method", "method", m) for m in methods]
        for i, method in enumerate(abl["method"]):
            if method not in REFERENCES:
                _check_method(method, f"{where}.method" + (f"[{i}]" if len(methods) > 1 else ""), fail)
        abl["epsilon"] = check_param(f"{where}.epsilon", "epsilon", abl["epsilon"])
        if not abl["epsilon"] > 0:
            fail(f"{where}.epsilon", f"{abl['epsilon']} must be > 0 (.inf for non-private)")
        if not isinstance(abl["seeds"], list) or not abl["seeds"]:
            fail(f"{where}.seeds", "must be a non-empty list of ints")
        abl["seeds"] = [check_param(f"{where}.seeds[{i}]", "seed", s) for i, s in enumerate(abl["seeds"])]
        for i, (value, fixed) in enumerate(zip(abl["values"], abl["with"])):
            fixed_and_value = merge_overrides(merge_overrides(base, fixed), dotted_override(abl["knob"], value))
            _check_overrides(profile, fixed_and_value, f"{where}.values[{i}]", fail)

    points = _expand(profile, base, checked_axes, extra_axes, references, ablations, reference_seeds)
    run_order = spec.get("run_order", "seed")
    if run_order not in RUN_ORDERS:
        fail("run_order", f"{run_order!r} is not an order; choose one of {list(RUN_ORDERS)}")
    if run_order == "method":  # a stable sort: within a method, the points keep their seed and epsilon order
        rank = {method: i for i, method in enumerate(checked_axes["method"])}
        kinds = {"reference": 0, "main": 1, "ablation": 2}
        points.sort(key=lambda p: (kinds[p.kind], rank[p.params["method"]] if p.kind == "main" else 0))
    seen: dict[str, Point] = {}
    for point in points:
        if point.point_id in seen:
            fail(point.kind, f"point {point.point_id} appears twice; remove the duplicate value")
        seen[point.point_id] = point
        where = f"point {point.point_id}"
        _check_overrides(profile, point.params["overrides"], where, fail)  # combinations of the above
        try:
            point.params = validate_parameters(notebook, point.params)
        except ParameterError as err:
            fail(where, str(err))
    regime_map = spec.get("regime_map", False)
    if not isinstance(regime_map, bool):
        fail("regime_map", f"must be true or false, got {regime_map!r}")
    report = spec.get("report", "ppl_vs_eps")
    if report not in REPORTS:
        fail("report", f"{report!r} is not a report; choose one of {list(REPORTS)}")
    try:
        slurm = executors.check_slurm_settings(spec.get("slurm") or {})
    except executors.SlurmSettingError as err:
        fail(f"slurm.{err.key}" if err.key else "slurm", err.message)
    return Grid(path.stem, path, notebook, points, regime_map=regime_map, report=report, slurm=slurm)


def _check_method(method: str, key: str, fail) -> None:
    from distildp.core.methods import check_method

    try:
        check_method(method, references=False)
    except ValueError as err:
        fail(key, str(err))


def _check_overrides(profile: str, overrides: dict, where: str, fail) -> None:
    """The Settings these overrides give, built and checked as the notebook's own make_settings call does."""
    from distildp.pipeline.settings import make_settings

    try:
        make_settings(profile, overrides)
    except (ValueError, TypeError, FileNotFoundError) as err:
        fail(where, f"overrides {overrides}: {err}")


# ---------------------------------------------------------------------------------------------- points
def fmt(value: Any) -> str:
    """A value as it reads in a point id: 2.0 -> '2', inf -> 'inf', 0.25 -> '0.25', 'csv:/x' -> 'csv-x'."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-")


def _expand(
    profile: str,
    base: dict,
    axes: dict,
    extra_axes: list[str],
    references: list[str],
    ablations: dict,
    reference_seeds: list[int],
) -> list[Point]:
    """The points in a stable order: per variant and seed the references, then epsilon x method;
    then the ablations. Method order within an epsilon is the grid's (put methods sharing a teacher apart).
    References run at `reference_seeds`; pretrained ones at the first only, unless each seed pretrains its own."""
    from distildp.core.methods import REFERENCES
    from distildp.pipeline.settings import dotted_override, merge_overrides

    def params(
        overrides: dict, method: str, seed: int, epsilon: float | None = None, extra: dict | None = None
    ) -> dict:
        p = {"profile": profile, "overrides": merge_overrides(overrides, extra or {}), "method": method, "seed": seed}
        if epsilon is not None:
            p["epsilon"] = epsilon
        return p

    points = []
    variants = list(itertools.product(*(axes[a] for a in extra_axes)))
    for combo in variants:
        variant = "__".join(f"{axis}-{fmt(v)}" for axis, v in zip(extra_axes, combo))
        prefix = f"{variant}__" if variant else ""
        overrides = base
        for axis, value in zip(extra_axes, combo):
            overrides = merge_overrides(overrides, dotted_override(axis, value))

        main = {}
        per_seed_pretraining = _pretrains_per_seed(profile, overrides)
        for seed in list(dict.fromkeys(reference_seeds + axes["seed"])):
            for ref in references if seed in reference_seeds else []:  # epsilon does not apply: rows carry 0 or inf
                if ref.startswith("pretrained") and seed != reference_seeds[0] and not per_seed_pretraining:
                    continue  # public pretraining does not depend on the seed: one point
                main[ref, None, seed] = Point(
                    f"{prefix}{ref}__seed{seed}", "reference", params(overrides, ref, seed), variant
                )
                points.append(main[ref, None, seed])
            for epsilon in axes["epsilon"] if seed in axes["seed"] else []:
                for method in axes["method"]:
                    main[method, epsilon, seed] = Point(
                        f"{prefix}{method}__eps{fmt(epsilon)}__seed{seed}",
                        "main",
                        params(overrides, method, seed, epsilon),
                        variant,
                    )
                    points.append(main[method, epsilon, seed])
        for label, abl in ablations.items():
            for value, fixed in zip(abl["values"], abl["with"]):
                extra = merge_overrides(fixed, dotted_override(abl["knob"], value))
                for method, seed in itertools.product(abl["method"], abl["seeds"]):
                    reference = method in REFERENCES
                    epsilon = None if reference else abl["epsilon"]
                    at = "" if reference else f"__eps{fmt(epsilon)}"
                    point = Point(
                        f"abl-{label}{fmt(value)}__{prefix}{method}{at}__seed{seed}",
                        "ablation",
                        params(overrides, method, seed, epsilon, extra),
                        variant,
                        label,
                        value,
                    )
                    twin = main.get((method, epsilon, seed))
                    if twin and _same_settings(profile, point.params["overrides"], twin.params["overrides"]):
                        point.same_as = twin.point_id
                    points.append(point)
    return points


def _pretrains_per_seed(profile: str, overrides: dict) -> bool:
    """Whether these settings pretrain the public models once per seed (Settings.pretrain_seed = 'seed')."""
    from distildp.pipeline.settings import make_settings

    try:
        return make_settings(profile, overrides).pretrain_seed == "seed"
    except (ValueError, TypeError, FileNotFoundError):
        return False  # invalid overrides are reported by _check_overrides


def _same_settings(profile: str, overrides: dict, other: dict) -> bool:
    """Whether two override sets give the same Settings (e.g. an ablation value equal to the default)."""
    from distildp.pipeline.settings import make_settings

    try:
        return make_settings(profile, overrides) == make_settings(profile, other)
    except (ValueError, TypeError, FileNotFoundError):
        return False  # invalid overrides are reported by _check_overrides


def shard(points: list[Point], spec: str | None) -> list[Point]:
    """'i/n': every point whose index % n == i (the grid's stable order)."""
    if not spec:
        return points
    match = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {spec!r}: write i/n with 0 <= i < n, e.g. --shard 0/4")
    i, n = int(match[1]), int(match[2])
    return [p for index, p in enumerate(points) if index % n == i]
