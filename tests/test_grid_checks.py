"""Every Settings field of every grid point is checked by the library before any kernel starts.

`python -m distildp.runner --dry-run` builds each point's Settings as its notebook does (make_settings) and calls the
library's checks (Settings.__post_init__ and Settings.validate), so a notebook gets the same messages.
"""

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from distildp.pipeline.settings import Settings, make_settings
from distildp.runner import grid_file, grids
from distildp.teaching.notebooks import execute

from helpers import ROOT, cli, executions, make_notebook

FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOKS = ROOT / "notebooks"


def write_grid(tmp_path: Path, text: str) -> Path:
    """A grid written as YAML text (not dumped from Python: how PyYAML reads `1e-5` is part of the test)."""
    notebook = make_notebook(tmp_path)
    path = tmp_path / "checks.yaml"
    path.write_text(
        f"profile: smoke\nnotebook: {notebook}\naxes: {{method: [distildp], epsilon: [2.0], seed: [0]}}\n" + text
    )
    return path


def csv_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(FIXTURES / "csv_corpus", folder)  # 3 training rows
    return folder


@pytest.mark.parametrize(
    "text, key, message",
    [
        # delta: a number below 1/N for the N the point uses (smoke: n_train 200), or None or 'paper'
        ("overrides: {delta: 0.01}", "overrides", r"200 training documents: delta=0.01 >= 1/N = 0.005 \(N=200\)"),
        ("overrides: {delta: 1e-5}", "overrides", r"delta='1e-5': use a number below 1/N.*YAML 1.1.*1.0e-5"),
        ("overrides: {delta: Paper}", "overrides", r"delta='Paper': .*or 'paper' \(1/N"),
        (
            "overrides: {delta: 0.004}\naxes: {method: [distildp], epsilon: [2.0], seed: [0],"
            " dataset_options.n_train: [100, 1000]}",
            r"axes.dataset_options.n_train\[1\]",
            r"delta=0.004 >= 1/N = 0.001",
        ),
        ("ablations: {delta: {values: [0.001, 1.0e-2]}}", r"ablations.delta.values\[1\]", r"delta=0.01 >= 1/N"),
        # accountants, schemes, gradient modes: the names the library supports
        ("overrides: {accountant: gdp}", "overrides", r"accountant='gdp'; choose one of \('prv', 'rdp'\)"),
        (
            "overrides: {budget_scheme: half}",
            "overrides",
            r"budget_scheme='half'; choose one of \('composed', 'split'\)",
        ),
        ("overrides: {grad_sample_mode: ghosts}", "overrides", r"grad_sample_mode='ghosts'; choose one of"),
        # dataset_options: the chosen loader's parameters, of their declared types
        (
            "overrides: {dataset_options: {n_trian: 50}}",
            "overrides",
            r"dataset_options \['n_trian'\] do not apply to dataset 'builtin': it takes \[.*'n_train'",
        ),
        (
            "overrides: {dataset_options: {n_train: 1e3}}",
            "overrides",
            r"dataset_options.n_train must be int, got str '1e3'; YAML 1.1",
        ),
        (
            "overrides: {public_options: {text_column: body}}",
            "overrides",
            r"public_options \['text_column'\] do not apply to public_corpus 'builtin': it takes no options",
        ),
        # numbers YAML 1.1 reads as text, at any depth
        ("overrides: {lam: 1e-1}", "overrides", r"lam must be float, got str '1e-1'; YAML 1.1 .* \(1.0e-5, 1.0e\+5\)"),
        ("overrides: {teacher_train: {lr: 3e-3}}", "overrides", r"teacher_train.lr must be float, got str '3e-3'"),
        (
            "overrides: {generation: {top_k: '50'}}",
            "overrides",
            r"generation.top_k must be int, got str '50'; a quoted",
        ),
        ("ablations: {lam: {values: [0.1, 1e-2]}}", r"ablations.lam.values\[1\]", r"lam must be float.*YAML 1.1"),
        ("overrides: {teacher_train: 3}", "overrides", r"teacher_train must be a mapping of TrainConfig fields"),
        # csv folders must be there
        (
            "axes: {method: [distildp], epsilon: [2.0], seed: [0], dataset: ['csv:nowhere']}",
            r"axes.dataset\[0\]",
            r"corpus 'csv:nowhere' needs nowhere/train.csv",
        ),
    ],
)
def test_bad_settings_fail_the_dry_run_naming_the_key(tmp_path, capsys, text, key, message):
    grid = write_grid(tmp_path, text)
    with pytest.raises(grid_file.GridError, match=f"{grid}: {key}: .*{message}") as refused:
        grids.load_grid(str(grid))
    if key == "overrides":  # what a notebook's own make_settings call says: the runner's message, after the key
        overrides = yaml.safe_load(grid.read_text())["overrides"]
        with pytest.raises((ValueError, FileNotFoundError)) as in_notebook:
            make_settings("smoke", overrides)
        assert str(refused.value) == f"{grid}: overrides: overrides {overrides}: {in_notebook.value}"
    assert cli(grid, tmp_path / "results", "--dry-run") == 2
    assert f"{grid}: {key.replace(chr(92), '')}: " in capsys.readouterr().err  # the key without regex escapes
    assert executions(tmp_path) == []


def test_delta_against_a_csv_corpus_counts_its_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv_copy(tmp_path)
    ok = write_grid(tmp_path, "overrides: {dataset: 'csv:corpus', delta: 0.2}")
    assert [p.point_id for p in grids.load_grid(str(ok)).points] == ["distildp__eps2__seed0"]
    bad = write_grid(tmp_path, "overrides: {dataset: 'csv:corpus', delta: 0.5}")
    with pytest.raises(
        grid_file.GridError, match=r"overrides: .*'csv:corpus' has 3 training documents: delta=0.5 >= 1/N"
    ):
        grids.load_grid(str(bad))


def test_profile_options_for_another_dataset_are_left_out_with_a_note(tmp_path, monkeypatch, capsys):
    """smoke's dataset_options size the built-in corpus; with a csv dataset they are dropped (the user's own are
    not: those that do not apply are refused)."""
    monkeypatch.chdir(tmp_path)
    csv_copy(tmp_path)
    grid = write_grid(tmp_path, "overrides: {dataset: 'csv:corpus'}")
    loaded = grids.load_grid(str(grid))
    assert loaded.points[0].params["overrides"] == {"dataset": "csv:corpus"}
    assert (
        len(loaded.notes) == 1
        and "['n_test', 'n_train', 'n_val'] do not apply to dataset 'csv:corpus'" in loaded.notes[0]
    )
    assert cli(grid, tmp_path / "results", "--dry-run") == 0
    assert "note: profile 'smoke': its dataset_options" in capsys.readouterr().err
    mine = write_grid(tmp_path, "overrides: {dataset: 'csv:corpus', dataset_options: {n_train: 2}}")
    with pytest.raises(
        grid_file.GridError,
        match=r"overrides: .*dataset_options \['n_train'\] do not apply to dataset "
        r"'csv:corpus': it takes \['code_names', 'name'\]",
    ):
        grids.load_grid(str(mine))


def test_dry_run_on_the_command_line(tmp_path):
    """The CLI itself: exit status 2 and the message on stderr, nothing run."""
    grid = write_grid(tmp_path, "overrides: {delta: 1e-5}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distildp.runner",
            "--grid",
            str(grid),
            "--dry-run",
            "--results",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert f"error: {grid}: overrides: " in done.stderr and "YAML 1.1" in done.stderr
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------- the library
@pytest.mark.notebook
def test_a_notebook_refuses_a_wrong_type_before_any_stage_with_the_runners_message(tmp_path):
    """06_baselines given an override of the wrong type stops at its first call, make_settings, with the message
    the runner's dry run gives for the same override in a grid, and builds nothing."""
    from papermill.exceptions import PapermillExecutionError

    grid = write_grid(tmp_path, "overrides: {teacher_train: {lr: 3e-3}}")  # YAML 1.1 reads 3e-3 as text
    with pytest.raises(grid_file.GridError) as refused:
        grids.load_grid(str(grid))
    store = tmp_path / "store"
    params = {
        "profile": "smoke",
        "overrides": {"teacher_train": {"lr": "3e-3"}},
        "method": "dpsgd",
        "store": str(store),
    }
    with pytest.raises(PapermillExecutionError) as failed:
        execute(NOTEBOOKS / "06_baselines.ipynb", tmp_path / "06.ipynb", params, cwd=NOTEBOOKS)
    assert failed.value.ename == "ValueError" and "teacher_train.lr must be float" in failed.value.evalue
    assert str(refused.value).endswith(f": {failed.value.evalue}")
    assert not store.exists()  # no stage ran: the store was never created


def test_notebooks_get_the_same_checks():
    with pytest.raises(ValueError, match=r"delta='1e-5'.*YAML"):
        make_settings("quick", {"delta": "1e-5"})
    with pytest.raises(ValueError, match=r"accountant='RDP'"):
        Settings(accountant="RDP")
    with pytest.raises(ValueError, match=r"delta=1.5 must lie strictly between 0 and 1"):
        Settings(delta=1.5)
    with pytest.raises(ValueError, match=r"4000 training documents: delta=0.001 >= 1/N"):
        make_settings("quick", {"delta": 1e-3}).validate()  # the embedded default's N = 4,000
    with pytest.raises(ValueError, match=r"dataset='imdb': unknown corpus"):
        Settings(dataset="imdb")
    assert make_settings("quick", {"delta": "paper"}).validate().delta == "paper"
    assert make_settings("quick", {"delta": 1e-4}).validate().delta == 1e-4
    assert make_settings("paper").validate().dataset == "yelp"  # a hub dataset: N unknown, delta checked later
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note when nothing is dropped
        assert make_settings("smoke").dataset_options == {"n_train": 200, "n_val": 40, "n_test": 40}
        assert make_settings("smoke", {"dataset": "yelp"}).dataset_options["n_train"] == 200  # yelp takes them


def test_one_checker_names_the_key_what_it_must_be_what_it_got_and_the_fix():
    """distildp.core.values: what settings, notebook parameters and grid files are all checked with."""
    from typing import Literal

    from distildp.core.values import annotation, fields_problem, problem

    assert problem("lam", 0.4, float) is None and problem("lam", 2, float) is None  # ints fit floats
    assert str(problem("seed", True, int)) == "seed must be int, got bool True"  # bools fit neither
    assert str(problem("n", 2.5, int | None)) == "n must be int or None, got float 2.5"
    assert problem("lr", "3e-3", float).fix.startswith("YAML 1.1")
    assert str(problem("sizes", [1, 2.5], list[int])) == "sizes[1] must be int, got float 2.5"
    assert str(problem("order", "random", Literal["seed", "method"])) == (
        "order must be one of ['seed', 'method'], got str 'random'"
    )
    assert (
        str(fields_problem({"teacher_train": {"lr": "x"}}, Settings)) == "teacher_train.lr must be float, got str 'x'"
    )
    assert fields_problem({"unknown": 1}, Settings) is None  # names are checked by whoever knows them
    assert annotation("list[int]") == list[int] and annotation("float | None") is None


def test_committed_grids_still_check_out_with_their_notes(tmp_path):
    for path in sorted((ROOT / "benchmarks" / "grids").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if not (grids.NOTEBOOKS_DIR / spec["notebook"]).exists():
            spec["notebook"] = str(make_notebook(tmp_path))
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(spec))
        assert grids.load_grid(str(copy)).notes == [], path.name


def test_run_order_hands_out_every_point_of_a_method_in_turn(tmp_path):
    notebook = make_notebook(tmp_path)
    text = (
        f"profile: smoke\nnotebook: {notebook}\n"
        "axes: {method: [dpsgd, distildp], epsilon: [1.0, 2.0], seed: [0, 1]}\n"
        "references: [pretrained_student]\nablations: {lam: {values: [0.0]}}\n"
    )
    path = tmp_path / "order.yaml"
    path.write_text(text)
    by_seed = [p.point_id for p in grids.load_grid(str(path)).points]
    path.write_text(text + "run_order: method\n")
    by_method = [p.point_id for p in grids.load_grid(str(path)).points]
    runs = [f"{m}__eps{e}__seed{s}" for m in ("dpsgd", "distildp") for s in (0, 1) for e in (1, 2)]
    assert by_method == ["pretrained_student__seed0", *runs, "abl-lam0__distildp__eps1__seed0"]
    assert by_seed[:3] == ["pretrained_student__seed0", "dpsgd__eps1__seed0", "distildp__eps1__seed0"]
    assert sorted(by_seed) == sorted(by_method)  # the same points, in another order
    path.write_text(text + "run_order: random\n")
    with pytest.raises(
        grid_file.GridError,
        match=r"run_order: must be one of \['seed', 'method'\] \(the order the points run in\), got str 'random'",
    ):
        grids.load_grid(str(path))
