"""A grid file (benchmarks/grids/*.yaml), loaded and expanded into the points the runner runs.

The whole grid is checked before any kernel starts (distildp.runner.grid_file), every error naming the grid file
and the key. A profile's dataset_options that the grid's dataset does not take (smoke's n_train with dataset:
csv:...) are left out, with a note; the grid's own are refused.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distildp.runner.grid_file import GridChecks, read_grid_file

ROOT = Path(__file__).resolve().parents[3]
GRIDS_DIR = ROOT / "benchmarks" / "grids"
NOTEBOOKS_DIR = ROOT / "notebooks"


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
    report: str = "ppl_vs_eps"  # 'audit': the rows are notebook 08's (distildp.audit.audit_report.write_audit_report)
    notes: list[str] = field(default_factory=list)  # what the checks adjusted (e.g. a profile's options left out)
    slurm: dict = field(default_factory=dict)  # the cluster jobs' settings (executors.SlurmSettings)


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
        grid = _load_grid(grid_path(name_or_path))
    grid.notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for w in caught:  # anything else goes on as usual
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return grid


def _load_grid(path: Path) -> Grid:
    spec = read_grid_file(path)
    notebook = Path(spec.notebook)
    check = GridChecks.of(path, spec, notebook if notebook.is_absolute() else NOTEBOOKS_DIR / notebook)
    if not check.notebook.exists():
        check.fail("notebook", f"{check.notebook} does not exist (relative names are looked up in {NOTEBOOKS_DIR})")
    axes, extra_axes = check.axes(spec.axes)
    references, reference_seeds = check.references(spec, axes["seed"])
    ablations = {label: check.ablation(label, abl, axes) for label, abl in (spec.ablations or {}).items()}
    points = _expand(check.profile, check.base, axes, extra_axes, references, ablations, reference_seeds)
    if spec.run_order == "method":  # a stable sort: within a method, the points keep their seed and epsilon order
        rank = {method: i for i, method in enumerate(axes["method"])}
        kinds = {"reference": 0, "main": 1, "ablation": 2}
        points.sort(key=lambda p: (kinds[p.kind], rank[p.params["method"]] if p.kind == "main" else 0))
    seen = set()
    for point in points:
        if point.point_id in seen:
            check.fail(point.kind, f"point {point.point_id} appears twice; remove the duplicate value")
        seen.add(point.point_id)
        point.params = check.point(point.point_id, point.params)
    slurm = check.slurm(spec.slurm)
    return Grid(path.stem, path, check.notebook, points, regime_map=spec.regime_map, report=spec.report, slurm=slurm)


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
    points = []
    for variant, overrides in _variants(base, axes, extra_axes):
        main = _main_points(profile, overrides, axes, references, reference_seeds, variant)
        points += main
        by_run = {(p.params["method"], p.params.get("epsilon"), p.params["seed"]): p for p in main}
        points += _ablation_points(profile, overrides, ablations, by_run, variant)
    return points


def _params(
    profile: str, overrides: dict, method: str, seed: int, epsilon: float | None = None, extra: dict | None = None
) -> dict:
    """A point's notebook parameters (a reference has no epsilon)."""
    from distildp.pipeline.settings import merge_overrides

    params = {"profile": profile, "overrides": merge_overrides(overrides, extra or {}), "method": method, "seed": seed}
    if epsilon is not None:
        params["epsilon"] = epsilon
    return params


def _variants(base: dict, axes: dict, extra_axes: list[str]):
    """(name, overrides) of every combination of the other axes' values: ('', base) when there are none."""
    from distildp.pipeline.settings import dotted_override, merge_overrides

    for combo in list(itertools.product(*(axes[a] for a in extra_axes))):
        variant = "__".join(f"{axis}-{fmt(v)}" for axis, v in zip(extra_axes, combo))
        overrides = base
        for axis, value in zip(extra_axes, combo):
            overrides = merge_overrides(overrides, dotted_override(axis, value))
        yield variant, overrides


def _main_points(
    profile: str, overrides: dict, axes: dict, references: list[str], reference_seeds: list[int], variant: str
) -> list[Point]:
    """A variant's references and epsilon x method points, seed by seed."""
    prefix = f"{variant}__" if variant else ""
    per_seed_pretraining = _pretrains_per_seed(profile, overrides)
    points = []
    for seed in list(dict.fromkeys(reference_seeds + axes["seed"])):
        for ref in references if seed in reference_seeds else []:  # epsilon does not apply: rows carry 0 or inf
            if ref.startswith("pretrained") and seed != reference_seeds[0] and not per_seed_pretraining:
                continue  # public pretraining does not depend on the seed: one point
            params = _params(profile, overrides, ref, seed)
            points.append(Point(f"{prefix}{ref}__seed{seed}", "reference", params, variant))
        for epsilon in axes["epsilon"] if seed in axes["seed"] else []:
            for method in axes["method"]:
                params = _params(profile, overrides, method, seed, epsilon)
                points.append(Point(f"{prefix}{method}__eps{fmt(epsilon)}__seed{seed}", "main", params, variant))
    return points


def _ablation_points(profile: str, overrides: dict, ablations: dict, main: dict, variant: str) -> list[Point]:
    """A variant's ablation points; one whose Settings equal a main point's (`main`: by method, epsilon and seed)
    reuses that point's row."""
    from distildp.core.methods import REFERENCES
    from distildp.pipeline.settings import dotted_override, merge_overrides

    prefix = f"{variant}__" if variant else ""
    points = []
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
                    _params(profile, overrides, method, seed, epsilon, extra),
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
        return False  # invalid overrides are reported by _Checks.overrides


def _same_settings(profile: str, overrides: dict, other: dict) -> bool:
    """Whether two override sets give the same Settings (e.g. an ablation value equal to the default)."""
    from distildp.pipeline.settings import make_settings

    try:
        return make_settings(profile, overrides) == make_settings(profile, other)
    except (ValueError, TypeError, FileNotFoundError):
        return False  # invalid overrides are reported by _Checks.overrides


def shard(points: list[Point], spec: str | None) -> list[Point]:
    """'i/n': every point whose index % n == i (the grid's stable order)."""
    if not spec:
        return points
    match = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {spec!r}: write i/n with 0 <= i < n, e.g. --shard 0/4")
    i, n = int(match[1]), int(match[2])
    return [p for index, p in enumerate(points) if index % n == i]
