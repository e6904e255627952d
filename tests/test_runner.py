"""python -m distildp.runner: grid checks before any kernel, parallel points, resume, failures, shards.

The points run a tiny stand-in of notebooks/06_baselines.ipynb (same typed parameters) that writes a fake
row in a blink and logs each execution, so these tests time the runner, not the pipeline.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest
import yaml

from distildp.pipeline.settings import make_settings
from distildp.reporting import results
from distildp.runner import grid_file, grids, points, processes, run

from helpers import PARAMETERS, ROOT, cli, executions, make_notebook


def write_grid(directory: Path, notebook: Path, **changes) -> Path:
    grid = {
        "profile": "smoke",
        "notebook": str(notebook),
        "overrides": {},
        "axes": {"method": ["distildp", "dpsgd"], "epsilon": [2.0], "seed": [0]},
        "references": ["pretrained_student"],
        "ablations": {"lam": {"values": [0.0], "method": "distildp", "epsilon": 2.0, "seeds": [0]}},
    }
    grid.update(changes)
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny grid run once, uninterrupted, with two jobs (4 points: 2 methods, 1 reference, 1 ablation)."""
    directory = tmp_path_factory.mktemp("grid")
    grid = write_grid(directory, make_notebook(directory))
    code = cli(grid, directory / "results", "--jobs", "2")
    return directory, grid, code


# ---------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"axis": {"method": ["distildp"], "epsilon": [2.0], "seed": [0]}}, "axis", "unknown key"),
        ({"axes": {"method": ["distildp"], "epsilon": [2.0], "seed": [1.5]}}, r"axes.seed\[0\]", "must be int"),
        ({"axes": {"method": ["distildp"], "epsilon": ["2"], "seed": [0]}}, r"axes.epsilon\[0\]", "must be float"),
        ({"axes": {"method": ["distildp"], "epsilon": [0.0], "seed": [0]}}, r"axes.epsilon\[0\]", "must be > 0"),
        ({"axes": {"method": ["distilDP"], "epsilon": [2.0], "seed": [0]}}, r"axes.method\[0\]", "unknown method"),
        (
            {"axes": {"method": ["distildp"], "epsilon": [2.0], "seed": [0], "datset": ["yelp"]}},
            "axes.datset",
            "not a Settings field",
        ),
        ({"overrides": {"lamda": 0.2}}, "overrides", "lamda"),
        ({"overrides": {"lam": "0.2"}}, "overrides", "lam must be float"),
        ({"overrides": {"teacher_train": {"epoch": 2}}}, "overrides", "epoch"),
        ({"references": ["pretrained_students"]}, r"references\[0\]", "not a reference"),
        ({"ablations": {"temp": {"values": [1.0]}}}, "ablations.temp", "not a Settings field"),
        ({"ablations": {"lam": {"values": [0.1], "seeds": [0.5]}}}, r"ablations.lam.seeds\[0\]", "must be int"),
        (
            {"ablations": {"lam": {"values": [0.1], "method": ["dpsgd", "distilDP"]}}},
            r"ablations.lam.method\[1\]",
            "unknown method",
        ),
        ({"ablations": {"lam": {"values": [0.1], "with": [1]}}}, "ablations.lam.with", "must be a mapping"),
        ({"ablations": {"lam": {"values": [0.1, 0.2], "with": [{}]}}}, "ablations.lam.with", "list of 2"),
        (
            {"ablations": {"lam_paper": {"knob": "lamb", "values": [0.1]}}},
            "ablations.lam_paper.knob",
            "not a Settings field",
        ),
        (
            {"ablations": {"lam_paper": {"knob": "lam", "values": [0.1], "with": {"kd_weighting": "sum"}}}},
            r"ablations.lam_paper.values\[0\]",
            "kd_weighting",
        ),
        (
            {"ablations": {"synthetic_size": {"values": [100, "big"]}}},
            r"ablations.synthetic_size.values\[1\]",
            "synthetic_size must be",
        ),
        (
            {"axes": {"method": ["distildp"], "epsilon": [2.0], "seed": [0], "student_train.batch_size": [8, 2.5]}},
            r"axes.student_train.batch_size\[1\]",
            "student_train.batch_size must be int",
        ),
        ({"profile": "fast"}, "profile", r"must be one of \[.*'smoke'\] \(the Settings profile"),
        ({"report": "audits"}, "report", r"must be one of \['ppl_vs_eps', 'audit'\]"),
    ],
)
def test_bad_grid_is_refused_before_any_kernel(tmp_path, capsys, change, key, message):
    grid = write_grid(tmp_path, make_notebook(tmp_path), **change)
    with pytest.raises(grid_file.GridError, match=f"{grid}: {key}: .*{message}"):
        grids.load_grid(str(grid))
    assert cli(grid, tmp_path / "results", "--jobs", "2") == 2
    assert f"{grid}: " in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and executions(tmp_path) == []


def test_committed_grids_are_valid(tmp_path):
    """Every grid in benchmarks/grids checks out (against the stand-in until 06_baselines.ipynb exists)."""
    notebook = make_notebook(tmp_path)
    sizes = {}
    for path in sorted((ROOT / "benchmarks" / "grids").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if not (grids.NOTEBOOKS_DIR / spec["notebook"]).exists():
            spec["notebook"] = str(notebook)
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(spec))
        grid = grids.load_grid(str(copy))
        ids = [p.point_id for p in grid.points]
        assert len(ids) == len(set(ids))
        sizes[path.stem] = len(ids)
    assert {"smoke", "quick", "full", "paper"} <= set(sizes)
    quick = yaml.safe_load((ROOT / "benchmarks" / "grids" / "quick.yaml").read_text())
    n_ablation_points = sum(len(a["values"]) * len(a["seeds"]) for a in (quick.get("ablations") or {}).values())
    n_seeds, n_eps = len(quick["axes"]["seed"]), len(quick["axes"]["epsilon"])
    n_reference_seeds = len(quick.get("reference_seeds", quick["axes"]["seed"]))
    # pretrained references are seed-independent (one point each); non-private ones run per reference seed
    refs = quick["references"]
    n_pretrained = sum(r.startswith("pretrained_") for r in refs)
    n_reference_points = n_pretrained + (len(refs) - n_pretrained) * n_reference_seeds
    assert sizes["quick"] == len(quick["axes"]["method"]) * n_eps * n_seeds + n_reference_points + n_ablation_points
    assert sizes["paper"] == 3 * (4 * 2 + 4)


def test_an_audit_grid_reports_its_rows_as_the_privacy_audit(tmp_path):
    grid = grids.load_grid(
        str(write_grid(tmp_path, make_notebook(tmp_path), report="audit", references=[], ablations={}))
    )
    assert grid.report == "audit"
    curve = {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}
    audited = {
        "method": "dpsgd",
        "epsilon": 2.0,
        "epsilon_accounted": 1.99,
        "delta": 1e-4,
        "seed": 0,
        "model": "student",
        "stage": "private_student",
        "artifact": "private_student/0",
        "test_ppl": 100.0,
        "trained_on": "private text",
        "max_exposure": 26.6,
        "n_canaries": 1,
        "epsilon_lower_bound": 0.0,
        "canaries": [{"secret": "1", "repeats": 1, "exposure": 1.0, "public_exposure": 1.0, "rank": 5}],
        "roc": {"loss": curve, "reference": curve},
        **{
            f"{a}_{k}": 0.5
            for a in ("loss", "reference")
            for k in ("auc", "auc_low", "auc_high", "tpr_at_0.01", "epsilon_lower_bound")
        },
    }
    runs, tables, figures = results.grid_dirs(tmp_path / "results", grid.name)
    point = next(p for p in grid.points if p.params["method"] == "dpsgd")
    (runs / point.point_id).mkdir(parents=True)
    (runs / point.point_id / "row.json").write_text(
        json.dumps({"method": "dpsgd", "epsilon": 2.0, "seed": 0, "audits": [audited]})
    )
    written = run.write_tables(grid, runs, tables, figures)
    assert {p.name for p in written} >= {"audit.md", "audit.csv", "audit_roc.png"}
    assert not (tables / "ppl_vs_eps.md").exists()


def test_points_have_readable_stable_ids_and_overrides(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "tests" / "fixtures" / "csv_corpus", tmp_path / "x y")  # csv folders must exist
    monkeypatch.chdir(tmp_path)
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        axes={"method": ["distildp"], "epsilon": [2.0, float("inf")], "seed": [0], "dataset": ["builtin", "csv:x y"]},
    )
    points = {p.point_id: p for p in grids.load_grid(str(grid)).points}
    assert "dataset-builtin__distildp__eps2__seed0" in points
    assert "dataset-csv-x-y__distildp__epsinf__seed0" in points
    ablation = points["abl-lam0__dataset-builtin__distildp__eps2__seed0"]
    assert ablation.params["overrides"] == {"dataset": "builtin", "lam": 0.0}
    assert ablation.kind == "ablation" and ablation.knob == "lam" and ablation.value == 0.0
    assert points["dataset-builtin__pretrained_student__seed0"].kind == "reference"


def test_ablation_value_equal_to_the_grid_setting_reuses_the_main_row(tmp_path):
    default_lam = make_settings("smoke").lam
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        references=[],
        ablations={"lam": {"values": [0.0, default_lam], "method": "distildp", "epsilon": 2.0}},
    )
    points = {p.point_id: p for p in grids.load_grid(str(grid)).points}
    twin = points[f"abl-lam{grids.fmt(default_lam)}__distildp__eps2__seed0"]
    assert twin.same_as == "distildp__eps2__seed0" and points["abl-lam0__distildp__eps2__seed0"].same_as is None
    assert cli(grid, tmp_path / "results") == 0
    runs = tmp_path / "results" / "runs" / "tiny"
    assert twin.point_id not in executions(tmp_path)  # no kernel for it
    assert json.loads((runs / twin.point_id / "row.json").read_text()) == json.loads(
        (runs / "distildp__eps2__seed0" / "row.json").read_text()
    )
    table = pd.read_csv(tmp_path / "results" / "tiny" / "tables" / "ablation_lam.csv")
    assert sorted(table["value"].tolist()) == [0.0, default_lam]


def test_pretrained_references_run_once_and_non_private_ones_per_seed(tmp_path):
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        references=["pretrained_student", "nonprivate_student"],
        axes={"method": ["dpsgd"], "epsilon": [2.0], "seed": [0, 1]},
        ablations={},
    )
    ids = {p.point_id for p in grids.load_grid(str(grid)).points if p.kind == "reference"}
    assert ids == {"pretrained_student__seed0", "nonprivate_student__seed0", "nonprivate_student__seed1"}


def test_pretrained_references_run_per_seed_when_each_seed_pretrains(tmp_path):
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        references=["pretrained_student"],
        overrides={"pretrain_seed": "seed"},
        axes={"method": ["dpsgd"], "epsilon": [2.0], "seed": [0, 1]},
        ablations={},
    )
    ids = {p.point_id for p in grids.load_grid(str(grid)).points if p.kind == "reference"}
    assert ids == {"pretrained_student__seed0", "pretrained_student__seed1"}


def test_regime_ablations_run_several_methods_and_references_with_fixed_overrides(tmp_path):
    """A regime-map cell: one knob value, run for every method it can change (and its references)."""
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        regime_map=True,
        ablations={
            "teacher_model": {"values": ["tiny-teacher"], "method": ["distildp", "pretrained_teacher"], "epsilon": 2.0},
            "lam_paper": {"knob": "lam", "values": [1.0], "with": {"kd_weighting": "paper_sum"}},
        },
    )
    loaded = grids.load_grid(str(grid))
    points = {p.point_id: p for p in loaded.points}
    assert loaded.regime_map
    teacher = points["abl-teacher_modeltiny-teacher__pretrained_teacher__seed0"]
    assert "epsilon" not in teacher.params and teacher.params["overrides"] == {"teacher_model": "tiny-teacher"}
    assert points["abl-teacher_modeltiny-teacher__distildp__eps2__seed0"].params["epsilon"] == 2.0
    paper = points["abl-lam_paper1__distildp__eps2__seed0"]
    assert paper.knob == "lam_paper" and paper.params["overrides"] == {"kd_weighting": "paper_sum", "lam": 1.0}
    assert cli(grid, tmp_path / "results") == 0
    tables = tmp_path / "results" / "tiny" / "tables"
    assert (tables / "regime.md").exists() and not list(tables.glob("ablation_*"))


def test_reference_seeds_choose_where_references_run(tmp_path):
    refs = ["pretrained_student", "nonprivate_student"]
    axes = {"method": ["dpsgd"], "epsilon": [2.0], "seed": [0, 1]}
    grid = write_grid(tmp_path, make_notebook(tmp_path), references=refs, axes=axes, ablations={}, reference_seeds=[1])
    points = grids.load_grid(str(grid)).points
    assert [p.point_id for p in points if p.kind == "reference"] == [
        "pretrained_student__seed1",
        "nonprivate_student__seed1",
    ]
    assert {p.point_id for p in points if p.kind == "main"} == {"dpsgd__eps2__seed0", "dpsgd__eps2__seed1"}
    bad = write_grid(tmp_path, make_notebook(tmp_path), references=refs, axes=axes, reference_seeds=[0.5])
    with pytest.raises(grid_file.GridError, match=r"reference_seeds\[0\]: .*must be int"):
        grids.load_grid(str(bad))


def test_shards_are_disjoint_and_cover_the_grid(tmp_path, capsys):
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        axes={"method": ["distildp", "dpsgd", "dpkd"], "epsilon": [1.0, 8.0], "seed": [0, 1]},
    )
    everything = [p.point_id for p in grids.load_grid(str(grid)).points]
    listed = []
    for i in range(3):
        capsys.readouterr()
        assert cli(grid, tmp_path / "results", "--dry-run", "--shard", f"{i}/3") == 0
        listed.append([line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("todo")])
    assert sorted(sum(listed, [])) == sorted(everything)
    assert len(set(sum(listed, []))) == len(everything)
    assert listed[1] == everything[1::3]
    with pytest.raises(ValueError, match="--shard"):
        grids.shard([], "3/3")


# ---------------------------------------------------------------------------------------------- running
def test_tiny_grid_runs_end_to_end_with_two_jobs(finished):
    directory, grid, code = finished
    assert code == 0
    runs = directory / "results" / "runs" / "tiny"
    ids = sorted(p.point_id for p in grids.load_grid(str(grid)).points)
    assert sorted(p.name for p in runs.iterdir()) == ids
    assert executions(directory) == ids
    for point_id in ids:
        assert {"point.json", "row.json", "run.log", "standin.ipynb"} <= {p.name for p in (runs / point_id).iterdir()}
        assert json.loads((runs / point_id / "row.json").read_text())["threads"] == str(processes.Runner(2).threads)
    tables = directory / "results" / "tiny" / "tables"  # not results/tables: that is the quick grid's
    table = pd.read_csv(tables / "ppl_vs_eps.csv")
    assert sorted(table["method"]) == ["distildp", "dpsgd", "pretrained_student"]
    assert "| distildp" in (tables / "ppl_vs_eps.md").read_text()
    assert (directory / "results" / "tiny" / "figures" / "ppl_vs_eps.png").stat().st_size > 0
    ablation = pd.read_csv(tables / "ablation_lam.csv")
    assert ablation["value"].tolist() == [0.0] and ablation["student_ppl"].tolist() == [15.0]
    assert (directory / "results" / "tiny" / "figures" / "ablation_lam.png").exists()
    assert not (directory / "results" / "tables").exists()


def test_resume_reruns_only_unfinished_points(finished, tmp_path):
    directory, grid, code = finished
    assert code == 0
    results = tmp_path / "results"
    shutil.copytree(directory / "results", results)
    reference_tables = {p.name: p.read_text() for p in (results / "tiny" / "tables").iterdir()}
    shutil.rmtree(results / "tiny")
    interrupted = results / "runs" / "tiny" / "dpsgd__eps2__seed0"
    (interrupted / "row.json").unlink()  # killed before the notebook's last cell
    (interrupted / "half-written.tmp").write_text("junk")
    (directory / "executions.txt").unlink()
    assert cli(grid, results, "--jobs", "2") == 0
    assert executions(directory) == ["dpsgd__eps2__seed0"]
    assert not (interrupted / "half-written.tmp").exists()  # redone from scratch
    assert {p.name: p.read_text() for p in (results / "tiny" / "tables").iterdir()} == reference_tables


def test_points_asked_with_other_parameters_are_not_finished(finished, tmp_path, capsys):
    directory, grid, _ = finished
    other = tmp_path / "other"
    other.mkdir()
    changed = write_grid(other, grid.parent / "standin.ipynb", overrides={"lam": 0.8})  # same name: tiny
    capsys.readouterr()
    assert cli(changed, directory / "results", "--dry-run") == 0
    status = dict(line.split()[::-1] for line in capsys.readouterr().out.splitlines()[:-1])
    # the ablation sets lam itself, so only it is still the same point
    assert status == {
        "distildp__eps2__seed0": "todo",
        "dpsgd__eps2__seed0": "todo",
        "pretrained_student__seed0": "todo",
        "abl-lam0__distildp__eps2__seed0": "done",
    }


def test_failing_point_is_reported_and_the_others_finish(tmp_path, capsys):
    grid = write_grid(
        tmp_path,
        make_notebook(tmp_path),
        references=[],
        ablations={},
        axes={"method": ["distildp"], "epsilon": [2.0], "seed": [0, 13]},
    )
    assert cli(grid, tmp_path / "results", "--jobs", "2") == 1
    err = capsys.readouterr().err
    log = tmp_path / "results" / "runs" / "tiny" / "distildp__eps2__seed13" / "run.log"
    assert "FAILED distildp__eps2__seed13" in err and str(log) in err
    assert "stand-in failure for seed 13" in err
    assert (tmp_path / "results" / "runs" / "tiny" / "distildp__eps2__seed0" / "row.json").exists()
    assert len(pd.read_csv(tmp_path / "results" / "tiny" / "tables" / "ppl_vs_eps.csv")) == 1


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_grid_with_the_real_notebook(tmp_path):
    """The committed smoke grid through notebooks/06_baselines.ipynb and the real pipeline (minutes)."""
    if not (grids.NOTEBOOKS_DIR / "06_baselines.ipynb").exists():
        pytest.skip("notebooks/06_baselines.ipynb not written yet")
    assert cli("smoke", tmp_path / "results", "--jobs", "2", "--store", str(tmp_path / "store")) == 0
    table = pd.read_csv(tmp_path / "results" / "smoke" / "tables" / "ppl_vs_eps.csv")
    assert set(table["method"]) == {"distildp", "dpsgd", "pretrained_student"}
    assert (table["student_ppl"] >= table["floor"]).all()


# ---------------------------------------------------------------------------------------------- processes
# The point's kernel reports its pid, then beats until RELEASE exists (at most a minute), then writes its row.
SLEEPER = """
import json, os, time
with open(os.path.join(HERE, "kernel.pid"), "w") as f:
    f.write(str(os.getpid()))
deadline = time.time() + 60
while not os.path.exists(os.path.join(HERE, "release")) and time.time() < deadline:
    with open(os.path.join(HERE, "beats"), "a") as f:
        f.write("beat\\n")
    time.sleep(0.2)
with open(row_path, "w") as f:
    json.dump({"method": method, "epsilon": epsilon, "seed": seed, "student_ppl": 1.0}, f)
"""


def sleeper_grid(directory: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"HERE = {str(directory)!r}\n" + SLEEPER)]
    nbformat.write(nb, directory / "sleeper.ipynb")
    return write_grid(
        directory,
        directory / "sleeper.ipynb",
        references=[],
        ablations={},
        axes={"method": ["dpsgd"], "epsilon": [2.0], "seed": [0]},
    )


def start_runner(grid: Path, results: Path) -> subprocess.Popen:
    """`python -m distildp.runner` in a process of its own, as from a shell; returns once its point's kernel beats."""
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distildp.runner",
            "--grid",
            str(grid),
            "--results",
            str(results),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    beats = grid.parent / "beats"
    deadline = time.time() + 180  # two busy cores: a kernel can take a while to start
    while not beats.exists():
        assert runner.poll() is None, f"the runner exited with {runner.returncode} before the kernel started"
        assert time.time() < deadline, "the point's kernel did not start"
        time.sleep(0.2)
    return runner


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_and_wait(runner: subprocess.Popen, timeout: float = 10.0) -> list[int]:
    """SIGKILL the runner; return the pids of its descendants still alive `timeout` seconds later."""
    descendants = [p.pid for p in psutil.Process(runner.pid).children(recursive=True)]
    assert len(descendants) >= 2  # the point process and its kernel
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + timeout
    while any(alive(pid) for pid in descendants) and time.time() < deadline:
        time.sleep(0.1)
    return [pid for pid in descendants if alive(pid)]


@pytest.mark.slow
def test_killed_runner_takes_its_points_and_their_kernels_down(tmp_path):
    grid = sleeper_grid(tmp_path)
    runner = start_runner(grid, tmp_path / "results")
    kernel = int((tmp_path / "kernel.pid").read_text())
    survivors = [kernel, *(p.pid for p in psutil.Process(runner.pid).children(recursive=True))]
    try:
        survivors = kill_and_wait(runner)
        assert survivors == [] and not alive(kernel)
        beats = (tmp_path / "beats").read_text()
        time.sleep(1.0)
        assert (tmp_path / "beats").read_text() == beats  # nothing writes any more
    finally:  # whatever this test started and is still alive, by pid
        if runner.poll() is None:
            runner.kill()
        for pid in survivors:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_point_owned_by_a_live_process_is_skipped_never_cleared(tmp_path, capsys):
    grid = sleeper_grid(tmp_path)
    results = tmp_path / "results"
    point_dir = results / "runs" / "tiny" / "dpsgd__eps2__seed0"
    first = start_runner(grid, results)
    try:
        # a second runner on the same grid: the point is running, so it is left alone
        assert cli(grid, results) == 0
        out = capsys.readouterr().out
        assert "skipped dpsgd__eps2__seed0 (process " in out and "0 to run" in out
        assert (point_dir / "point.json").exists() and (point_dir / "run.log").exists()  # not cleared
        assert alive(int((tmp_path / "kernel.pid").read_text()))
        assert cli(grid, results, "--dry-run") == 0
        assert "busy  dpsgd__eps2__seed0" in capsys.readouterr().out
    finally:
        assert kill_and_wait(first) == []
    # its owner gone, the point is free: the next runner clears it and runs it to the end
    (tmp_path / "release").write_text("")
    (tmp_path / "kernel.pid").unlink()
    assert cli(grid, results) == 0
    assert (point_dir / "row.json").exists() and (tmp_path / "kernel.pid").exists()
    assert not points.is_busy(point_dir)
