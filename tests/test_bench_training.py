"""benchmarks/bench_training.py runs its workloads and writes one row per configuration, each against its eager one."""

import csv

import bench_training
import pytest


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_evaluation_workload_times_every_configuration_against_eager(tmp_path):
    out = tmp_path / "training.csv"
    bench_training.main(["--only", "evaluate", "--rounds", "1", "--out", str(out)])
    rows = read_rows(out)
    assert [row["config"] for row in rows] == ["eager", "+ gelu kernel", "+ sorted, 64 a batch, scored rows only"]
    assert float(rows[0]["speedup"]) == 1.0
    assert all(float(row["seconds"]) > 0 and row["workload"] == "evaluate tiny-teacher" for row in rows)


@pytest.mark.slow
def test_every_workload_runs_one_round(tmp_path):
    out = tmp_path / "training.csv"
    bench_training.main(["--rounds", "1", "--steps", "1", "--no-compile", "--out", str(out)])
    workloads = {row["workload"] for row in read_rows(out)}
    assert workloads == {
        "pretrain tiny-student",
        "pretrain tiny-teacher",
        "distill tiny-student",
        "evaluate tiny-teacher",
    }
