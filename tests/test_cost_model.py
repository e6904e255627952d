"""benchmarks/cost_model.py: GPU-hours per stage from step benchmarks, checked by hand on a small grid."""

import csv

import pytest

import cost_model


def write_bench(path, batch, nonprivate, dp_rows):
    fields = ["config", "s_per_step", "batch"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerow({"config": "non-private", "s_per_step": nonprivate, "batch": batch})
        for config, seconds in dp_rows.items():
            writer.writerow({"config": config, "s_per_step": seconds, "batch": batch})
    return path


def test_read_rates_takes_the_fastest_dp_mode(tmp_path):
    rates = cost_model.read_rates(
        write_bench(tmp_path / "b.csv", 16, 0.32, {"hooks+conv1d": 0.64, "bookkeeping": 0.48, "ghost": 0.8})
    )
    assert rates.dp_mode == "bookkeeping"
    assert rates.nonprivate == pytest.approx(0.02)
    assert rates.dp == pytest.approx(0.03)
    assert rates.forward == pytest.approx(0.02 / 3)


def test_stage_costs_by_hand(tmp_path):
    teacher = cost_model.read_rates(write_bench(tmp_path / "t.csv", 10, 3.0, {"hooks+conv1d": 6.0}))  # 0.3 / 0.6 s
    student = cost_model.read_rates(write_bench(tmp_path / "s.csv", 10, 1.0, {"ghost": 2.0}))  # 0.1 / 0.2 s
    grid = {
        "profile": "paper",
        "overrides": {
            "teacher_train": {"epochs": 2},
            "student_train": {"epochs": 3},
            "distill_train": {"epochs": 4},
            "synthetic_size": 1000,
        },
        "axes": {"dataset": ["yelp"], "method": ["distildp", "dpsgd"], "epsilon": [4.0, 8.0], "seed": [0, 1]},
        "references": ["nonprivate_teacher"],
    }
    rows = {row["stage"]: row for row in cost_model.stage_costs(grid, {"yelp": 36_000}, teacher, student)}
    # 2 epsilons x 2 seeds = 4 DP teachers of 2 epochs x 36,000 examples at 0.6 s each
    assert rows["DP teacher (DistilDP, synthetic-only)"]["count"] == 4
    assert rows["DP teacher (DistilDP, synthetic-only)"]["gpu_hours"] == pytest.approx(4 * 72_000 * 0.6 / 3600)
    assert rows["DP-SGD student"]["gpu_hours"] == pytest.approx(4 * 108_000 * 0.2 / 3600)
    assert rows["distilled students"]["count"] == 4  # DistilDP only: synthetic-only is not on the method axis
    assert rows["distilled students"]["gpu_hours"] == pytest.approx(4 * 4000 * 0.1 / 3600, abs=0.005)
    assert rows["non-private teacher"]["count"] == 2  # once per seed
    assert rows["non-private teacher"]["gpu_hours"] == pytest.approx(2 * 72_000 * 0.3 / 3600)
    assert "DP teacher (DPKD)" not in rows and "non-private student" not in rows


def test_the_paper_grid_from_the_committed_h200_measurements(tmp_path):
    out = tmp_path / "cost.csv"
    assert cost_model.main(["--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {row["dataset"] for row in rows} == {"yelp", "big_patent", "dbpedia_14"}
    yelp_teacher = next(r for r in rows if r["dataset"] == "yelp" and r["stage"].startswith("DP teacher (DistilDP"))
    # 5 epochs of 1.9M examples at 0.609 s per 16 (hooks + Conv1D on GPT-2 Large shapes), for epsilon 4 and 8
    assert float(yelp_teacher["gpu_hours"]) == pytest.approx(2 * 5 * 1.9e6 * 0.6091 / 16 / 3600, rel=1e-3)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="write dataset=N"):
        cost_model.parse_sizes(["yelp:10"])
    with pytest.raises(FileNotFoundError, match="bench_dpsgd_sweep.py --device cuda"):
        cost_model.read_rates(tmp_path / "missing.csv")
    only_dp = tmp_path / "only_dp.csv"
    only_dp.write_text("config,s_per_step,batch\nghost,1.0,4\n")
    with pytest.raises(ValueError, match="no 'non-private' row"):
        cost_model.read_rates(only_dp)
    with pytest.raises(ValueError, match="none of the DP modes"):
        cost_model.read_rates(write_bench(tmp_path / "b.csv", 4, 1.0, {}))
