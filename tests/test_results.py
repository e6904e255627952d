"""distildp.reporting.results, .regime, .report and .story: mean ± std tables over seeds, ∞, references and floors,
the gates and the verdict, the regime map, Markdown, figures, round trips, and the sentences told from the tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from distildp.core.methods import COVERS_ALL, COVERS_STUDENT_ONLY
from distildp.reporting import regime, report, results, story

INF = math.inf


def rows() -> pd.DataFrame:
    """Two methods x (eps 1, inf) x 3 seeds with known perplexities, two references, one ablation knob."""
    records = []
    ppl = {
        ("distildp", 1.0): [10.0, 12.0, 14.0],
        ("distildp", INF): [8.0, 8.0, 8.0],
        ("dpsgd", 1.0): [20.0, 21.0, 25.0],
        ("dpsgd", INF): [9.0, 9.5, 10.0],
    }
    for (method, eps), values in ppl.items():
        for seed, value in enumerate(values):
            records.append(
                {
                    "dataset": "builtin",
                    "method": method,
                    "epsilon": eps,
                    "seed": seed,
                    "student_ppl": value,
                    "teacher_ppl": value - 1,
                    "floor": 5.0,
                    "teacher_floor": 4.0,
                    "teacher_marginal_ppl": value - 0.5 if method == "distildp" else math.nan,
                }
            )
    for seed, value in enumerate([7.0, 7.5, 8.0]):
        records.append(
            {
                "dataset": "builtin",
                "method": "nonprivate_student",
                "epsilon": INF,
                "seed": seed,
                "student_ppl": value,
                "teacher_ppl": math.nan,
                "floor": 5.0,
                "teacher_floor": 4.0,
            }
        )
    records.append(
        {
            "dataset": "builtin",
            "method": "pretrained_teacher",
            "epsilon": 0.0,
            "seed": 0,
            "student_ppl": math.nan,
            "teacher_ppl": 50.0,
            "floor": 5.0,
            "teacher_floor": 4.0,
        }
    )
    records.append(
        {
            "dataset": "builtin",
            "method": "pretrained_student",
            "epsilon": 0.0,
            "seed": 0,
            "student_ppl": 70.0,
            "teacher_ppl": math.nan,
            "floor": 5.0,
            "teacher_floor": 4.0,
        }
    )
    for value, ppls in ((0.0, [13.0, 15.0]), (0.8, [11.0, 11.0])):
        for seed, p in enumerate(ppls):
            records.append(
                {
                    "dataset": "builtin",
                    "method": "distildp",
                    "epsilon": 1.0,
                    "seed": seed,
                    "student_ppl": p,
                    "teacher_ppl": 9.0,
                    "floor": 5.0,
                    "kind": "ablation",
                    "knob": "lam",
                    "value": value,
                }
            )
    return pd.DataFrame(records)


def test_reading_results_does_not_load_torch():
    """07_results and the runner's report read tables in a second: the method names come from distildp.core.methods,
    which imports nothing, not from the pipeline."""
    import subprocess
    import sys

    check = (
        "import sys, distildp.reporting.results, distildp.reporting.regime, distildp.reporting.report, "
        "distildp.reporting.story; "
        "assert 'torch' not in sys.modules, 'reading results imported torch'"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_ppl_table_mean_std_over_seeds_and_infinity():
    table = results.ppl_table(rows())
    assert list(table.columns) == ["ε=0", "ε=1", "ε=∞", "seeds"]
    assert table.loc["distildp", "ε=1"] == "12.00 ± 2.00"  # sample std of 10, 12, 14
    assert table.loc["dpsgd", "ε=1"] == f"22.00 ± {np.std([20, 21, 25], ddof=1):.2f}"
    assert table.loc["distildp", "ε=∞"] == "8.00 ± 0.00"
    assert table.loc["distildp", "seeds"] == "3"
    assert table.loc["nonprivate_student", "ε=∞"] == "7.50 ± 0.50"
    assert table.loc["nonprivate_student", "ε=1"] == ""
    assert table.loc["pretrained_teacher (plain text)", "ε=0"] == "50.00"  # one seed: no std
    assert table.loc["distildp's DP teacher (codes from the DP histogram)", "ε=1"] == "11.50 ± 2.00"
    assert table.loc["floor (exact)", "ε=1"] == "5.00"
    assert table.loc["teacher floor (exact, codes given)", "ε=∞"] == "4.00"
    assert list(table.index[:2]) == ["distildp", "dpsgd"]  # METHODS order, references after
    assert "lam" not in "".join(table.index)  # ablation rows stay out of the main table


def test_gates_and_verdict():
    gates = results.gates_table(rows()).set_index(["check", "ε"])["result"]
    assert gates[("gate 1: pretrained teacher <= 0.8 x pretrained student", "")] == "PASS"  # 50 / 70
    # DistilDP's teacher (11.5 at eps 1) against the DP-SGD student (22): passes
    assert gates[("gate 2: DP teacher (as sampled) < DP-SGD student", "1")] == "PASS"
    # 22 - 12 = 10 > 2 x the larger std (dpsgd's 2.65): a win; at inf 9.5 - 8 = 1.5 > 2 x 0.5
    assert gates[("DistilDP student vs the best baseline", "1")] == "WIN"
    assert gates[("DistilDP student vs the best baseline", "∞")] == "WIN"
    df = rows()
    df.loc[df["method"] == "pretrained_student", "student_ppl"] = 55.0  # 50 / 55 = 0.91 > 0.8
    df.loc[(df["method"] == "dpsgd") & (df["epsilon"] == INF), "student_ppl"] = [8.0, 8.6, 9.2]  # gap 0.6 < 1.2
    gates = results.gates_table(df).set_index(["check", "ε"])["result"]
    assert gates[("gate 1: pretrained teacher <= 0.8 x pretrained student", "")] == "FAIL"
    assert gates[("DistilDP student vs the best baseline", "∞")] == "TIE"


def test_a_failed_gate_is_written_next_to_the_results(tmp_path):
    df = rows()
    df.loc[df["method"] == "distildp", "teacher_marginal_ppl"] = 30.0  # worse than the DP-SGD student
    report.write_report(df, tmp_path / "t", tmp_path / "f")
    text = (tmp_path / "t" / "ppl_vs_eps.md").read_text()
    assert text.index("**Gate failed** (gate 2") < text.index("| gate 2") < text.index("| distildp ")
    gate_2 = [line for line in text.splitlines() if line.startswith("| gate 2")]
    assert gate_2 and all(line.rstrip(" |").endswith("FAIL") for line in gate_2)


def test_uneven_seed_counts_are_shown():
    df = rows()
    df = df.drop(df[(df["method"] == "dpsgd") & (df["epsilon"] == 1.0) & (df["seed"] == 2)].index)
    assert results.ppl_table(df).loc["dpsgd", "seeds"] == "2–3"


def test_ablation_table_and_plot(tmp_path):
    table = results.ablation_table(rows(), "lam")
    assert table["lam"].tolist() == [0.0, 0.8]
    assert table["student_ppl"].tolist() == [f"14.00 ± {np.std([13, 15], ddof=1):.2f}", "11.00 ± 0.00"]
    assert table["seeds"].tolist() == [2, 2]
    report.plot_ablation(rows(), "lam", tmp_path / "lam.png")
    assert (tmp_path / "lam.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no ablation rows for knob 'alpha'; knobs present: \\['lam'\\]"):
        results.ablation_table(rows(), "alpha")


def test_markdown_has_a_header_rule_and_every_cell():
    text = results.to_markdown(results.ppl_table(rows()))
    lines = text.splitlines()
    assert lines[0].startswith("| method") and "ε=∞" in lines[0]
    assert set(lines[1]) <= {"|", "-"}
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert "| distildp " in text and "12.00 ± 2.00" in text


def test_plot_places_infinity_at_the_right_end(tmp_path):
    fig = report.plot_ppl_vs_eps(rows())
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["1", "∞"] and ax.get_xscale() == "log"
    distildp = next(c for c in ax.containers if c.get_label() == "distildp").lines[0]
    np.testing.assert_allclose(distildp.get_xdata(), [1.0, 10.0])
    np.testing.assert_allclose(distildp.get_ydata(), [12.0, 8.0])
    floor = next(line for line in ax.get_lines() if line.get_label() == "floor (exact)")
    assert floor.get_ydata()[0] == 5.0
    fig.clf()
    report.plot_ppl_vs_eps(rows(), tmp_path / "ppl.png")
    assert (tmp_path / "ppl.png").stat().st_size > 1000


def test_plot_draws_the_non_private_student_at_infinity_when_no_method_runs_there():
    df = results.normalise(rows())
    df = df[~((df["kind"] == "main") & (df["epsilon"] == INF))]  # the methods at finite budgets only
    fig = report.plot_ppl_vs_eps(df)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "∞"]
    star = next(c for c in ax.containers if c.lines[0].get_marker() == "*").lines[0]
    np.testing.assert_allclose(np.asarray(star.get_xdata(), dtype=float), [10.0])
    np.testing.assert_allclose(
        np.asarray(star.get_ydata(), dtype=float), [7.5]
    )  # the non-private student's mean over its seeds
    labels = {line.get_label() for line in ax.get_lines()}
    assert "non-private student (ε = ∞)" in labels
    fig.clf()


def test_load_rows_reads_json_infinities_and_point_files(tmp_path):
    for point_id, row, point in [
        (
            "distildp__epsinf__seed0",
            {"method": "distildp", "epsilon": "inf", "seed": 0, "student_ppl": 9.0, "teacher_ppl": "nan"},
            {"kind": "main", "variant": ""},
        ),
        (
            "abl-lam0.2__distildp__eps2__seed0",
            {"method": "distildp", "epsilon": 2.0, "seed": 0, "student_ppl": 11.0},
            {"kind": "ablation", "knob": "lam", "value": 0.2},
        ),
        ("unfinished", None, {"kind": "main"}),
    ]:
        (tmp_path / point_id).mkdir()
        (tmp_path / point_id / "point.json").write_text(json.dumps(point))
        if row is not None:
            (tmp_path / point_id / "row.json").write_text(json.dumps(row))
    df = results.load_rows(tmp_path)
    assert list(df.columns[: len(results.COLUMNS)]) == results.COLUMNS
    assert len(df) == 2
    main = df[df["kind"] == "main"].iloc[0]
    assert main["epsilon"] == INF and math.isnan(main["teacher_ppl"]) and main["point_id"] == "distildp__epsinf__seed0"
    ablation = df[df["kind"] == "ablation"].iloc[0]
    assert ablation["knob"] == "lam" and ablation["value"] == 0.2
    assert len(results.load_rows(tmp_path, only=["distildp__epsinf__seed0"])) == 1


def test_write_report_round_trips_through_csv(tmp_path):
    written = report.write_report(rows(), tmp_path / "tables", tmp_path / "figures")
    names = sorted(p.name for p in written)
    assert names == [
        "ablation_lam.csv",
        "ablation_lam.md",
        "ablation_lam.png",
        "ppl_vs_eps.csv",
        "ppl_vs_eps.md",
        "ppl_vs_eps.png",
    ]
    again = results.read_csv(tmp_path / "tables" / "ppl_vs_eps.csv")
    pd.testing.assert_frame_equal(results.ppl_table(again), results.ppl_table(rows()))
    assert "12.00 ± 2.00" in (tmp_path / "tables" / "ppl_vs_eps.md").read_text()


def test_variants_get_their_own_sections_and_figures(tmp_path):
    df = rows()
    other = df.copy()
    other["dataset"], other["student_ppl"] = "yelp", other["student_ppl"] * 2
    df["variant"], other["variant"] = "dataset-builtin", "dataset-yelp"
    written = report.write_report(pd.concat([df, other]), tmp_path / "t", tmp_path / "f")
    assert {"ppl_vs_eps_dataset-builtin.png", "ppl_vs_eps_dataset-yelp.png"} <= {p.name for p in written}
    text = (tmp_path / "t" / "ppl_vs_eps.md").read_text()
    assert "### dataset-yelp" in text and "24.00 ± 4.00" in text


def test_regime_table_fills_a_cell_from_the_main_grid_and_reports_the_gates(tmp_path):
    df = rows()
    # a cell that reruns DistilDP only (the baselines cannot change): they come from the main grid at eps 1
    extra = []
    for seed, p in enumerate([30.0, 31.0, 32.0]):
        extra.append(
            {
                "dataset": "builtin",
                "method": "distildp",
                "epsilon": 1.0,
                "seed": seed,
                "student_ppl": p,
                "teacher_marginal_ppl": 25.0,
                "floor": 5.0,
                "kind": "ablation",
                "knob": "synthetic_factor",
                "value": 1.0,
            }
        )
    # a cell that reruns a reference: its own pretrained teacher (gate 1 fails there)
    extra.append(
        {
            "dataset": "builtin",
            "method": "pretrained_teacher",
            "epsilon": 0.0,
            "seed": 0,
            "teacher_ppl": 69.0,
            "kind": "ablation",
            "knob": "teacher_model",
            "value": "tiny-teacher",
        }
    )
    extra.append(
        {
            "dataset": "builtin",
            "method": "distildp",
            "epsilon": 1.0,
            "seed": 0,
            "student_ppl": 15.0,
            "teacher_marginal_ppl": 14.0,
            "kind": "ablation",
            "knob": "teacher_model",
            "value": "tiny-teacher",
        }
    )
    table = regime.regime_table(pd.concat([df, pd.DataFrame(extra)], ignore_index=True)).set_index(["axis", "value"])
    eps1 = table.loc[("epsilon", "1")]
    assert eps1["distildp"] == 12.0 and eps1["best baseline"] == "dpsgd" and eps1["Δ distildp - best"] == -10.0
    assert eps1["gate 1"] == "PASS" and eps1["gate 2"] == "PASS"
    small = table.loc[("synthetic_factor", 1.0)]
    assert small["dpsgd"] == 22.0 and small["Δ distildp - best"] == 9.0 and small["gate 2"] == "FAIL"
    tiny = table.loc[("teacher_model", "tiny-teacher")]
    assert tiny["gate 1 (teacher/student)"] == round(69 / 70, 3) and tiny["gate 1"] == "FAIL"
    assert tiny["seeds"] == 1 and tiny["dpsgd"] == 20.0  # the main grid's dpsgd at the same seed
    written = report.write_report(
        pd.concat([df, pd.DataFrame(extra)], ignore_index=True), tmp_path / "t", tmp_path / "f", regime_map=True
    )
    assert {"regime.md", "regime.png"} <= {p.name for p in written}


def test_regime_map_takes_dpopd_teachers_as_an_axis_and_never_counts_a_nonprivate_one_as_a_baseline():
    """DP-OPD's teacher is a regime-map axis: with a DP or public teacher DP-OPD is a baseline DistilDP must beat; with
    a non-private one its cell is marked with what its epsilon covers, and it is no baseline (it is not epsilon-DP)."""
    df = rows()
    main = df[(df["method"] == "dpsgd") | (df["kind"] == "reference") | (df["kind"].isna())]
    assert "dpopd" not in regime.regime_table(main).columns  # a grid without DP-OPD: its table is as before
    extra = []
    for teacher, ppl, covers in (("dp", 11.0, COVERS_ALL), ("nonprivate", 3.0, COVERS_STUDENT_ONLY)):
        for seed in range(3):
            extra.append(
                {
                    "dataset": "builtin",
                    "method": "dpopd",
                    "epsilon": 1.0,
                    "seed": seed,
                    "student_ppl": ppl,
                    "opd_teacher": teacher,
                    "epsilon_covers": covers,
                    "kind": "ablation",
                    "knob": "opd_teacher",
                    "value": teacher,
                }
            )
    table = regime.regime_table(pd.concat([df, pd.DataFrame(extra)], ignore_index=True)).set_index(["axis", "value"])
    dp = table.loc[("opd_teacher", "dp")]
    assert dp["dpopd"] == 11.0 and dp["best baseline"] == "dpopd (dp teacher)" and dp["Δ distildp - best"] == 1.0
    nonprivate = table.loc[("opd_teacher", "nonprivate [epsilon covers student updates only]")]
    assert nonprivate["dpopd"] == 3.0 and nonprivate["best baseline"] == "dpsgd"
    assert nonprivate["Δ distildp - best"] == -10.0  # the main grid's dpsgd at eps 1, as the epsilon cell's
    assert math.isnan(table.loc[("epsilon", "1"), "dpopd"])  # no DP-OPD in the main grid


def _verdicts(df: pd.DataFrame) -> dict[str, str]:
    table = results.gates_table(df)
    return dict(
        zip(
            table.loc[table["check"] == "DistilDP student vs the best baseline", "ε"],
            table.loc[table["check"] == "DistilDP student vs the best baseline", "result"],
        )
    )


def test_story_reads_the_gates_the_verdict_and_the_seeds_off_the_table():
    sentences = story.story(rows())
    assert sentences[0] == (
        "Gate 1 PASS: the pretrained teacher's test perplexity (50.00) is 0.714 x the pretrained "
        "student's (70.00); DistilDP needs at most 0.8."
    )
    assert (
        "ε = 1, gate 2 PASS: DistilDP's DP teacher, scored as its synthetic text is sampled, is at 11.50 ± 2.00, "
        "10.50 below the DP-SGD student (22.00 ± 2.65)."
    ) in sentences
    noise = 2 * np.std([20, 21, 25], ddof=1)  # dpsgd's std is the largest at eps 1
    assert (
        f"ε = 1, WIN for DistilDP: DistilDP's student (12.00 ± 2.00) is 10.00 below the best baseline, dpsgd "
        f"(22.00 ± 2.65), {10 / noise:.1f} times twice the largest seed std ({noise:.2f}), over 3 seeds."
    ) in sentences
    assert (
        "ε = 1, seed by seed: DistilDP's student is below dpsgd's on 3 of 3 seeds (by 10.00, 9.00, 11.00)." in sentences
    )
    assert "ε = 1, every method, best first: distildp 12.00, dpsgd 22.00." in sentences
    assert sentences[-2] == (
        "Across budgets, DistilDP's student minus the strongest baseline's: ε = 1: -10.00 (dpsgd); ε = ∞: -1.50 "
        "(dpsgd); DistilDP is ahead at every budget, and the gap narrows steadily from -10.00 to -1.50 as ε grows."
    )
    assert sentences[-1] == (
        "For scale: the student fine-tuned on the private data without privacy reaches 7.50; "
        "DistilDP's at ε = 1 is 4.50 above it; no model can go below the exact floor, 5.00."
    )
    assert results.seed_noise(rows(), 1.0) == pytest.approx(noise)


def test_story_says_tie_and_loss_by_the_verdicts_rule():
    df = rows()
    assert [s.split(":")[0] for s in story.story(df) if "best baseline" in s] == [
        "ε = 1, WIN for DistilDP",
        "ε = ∞, WIN for DistilDP",
    ]
    at_inf = (df["method"] == "dpsgd") & (df["epsilon"] == INF)
    df.loc[at_inf, "student_ppl"] = [8.0, 8.6, 9.2]  # gap 0.6 < 2 x 0.6: a tie
    at_1 = (df["method"] == "distildp") & (df["epsilon"] == 1.0) & df["kind"].isna()
    df.loc[at_1, "student_ppl"] = [30.0, 31.0, 32.0]
    sentences = story.story(df)
    verdicts = {
        s.split(",")[0].removeprefix("ε = "): s.split(",")[1].split(":")[0].strip()
        for s in sentences
        if "best baseline" in s
    }
    assert verdicts == {"1": "LOSS for DistilDP", "∞": "TIE"}
    assert _verdicts(df) == {"1": "LOSS", "∞": "TIE"}  # the same rule as the gates table
    assert any(
        s.startswith("ε = 1, LOSS for DistilDP: DistilDP's student (31.00 ± 1.00) is 9.00 above") for s in sentences
    )
    assert (
        "ε = 1, seed by seed: DistilDP's student is below dpsgd's on 0 of 3 seeds (by -10.00, -10.00, -7.00)."
        in sentences
    )
    assert sentences[-2].endswith("ε = 1: +9.00 (dpsgd); ε = ∞: -0.60 (dpsgd); the ordering flips between ε = 1 and ∞.")
    df.loc[df["method"] == "pretrained_student", "student_ppl"] = 55.0
    assert story.story(df)[0].startswith("Gate 1 FAIL: ")


def test_story_names_the_widest_budget_when_the_gap_does_not_move_steadily():
    df = rows()
    at_4 = df[(df["epsilon"] == 1.0) & df["kind"].isna()].assign(epsilon=4.0)
    at_4.loc[at_4["method"] == "distildp", "student_ppl"] = [5.0, 6.0, 7.0]  # gap -15 at eps 4: wider than at 1 or inf
    df = pd.concat([df, at_4], ignore_index=True)
    across = next(s for s in story.story(df) if s.startswith("Across budgets"))
    assert across.endswith(
        "ε = 1: -10.00 (dpsgd); ε = 4: -16.00 (dpsgd); ε = ∞: -1.50 (dpsgd); "
        "DistilDP is ahead at every budget, and the gap is widest at ε = 4 (-16.00)."
    )


def test_story_with_one_seed_gives_no_verdict_and_several_pretraining_seeds_give_each_ratio():
    one = rows()
    one = one[one["seed"] == 0]
    assert (
        "ε = 1, one seed: DistilDP's student (10.00) is 10.00 below the best baseline, dpsgd (20.00); with one "
        "seed there is no seed std, so no verdict."
    ) in story.story(one)
    assert math.isnan(results.seed_noise(one, 1.0))
    several = rows()
    extra = [
        {"method": m, "epsilon": 0.0, "seed": 1, "kind": "reference", **v}
        for m, v in (("pretrained_teacher", {"teacher_ppl": 60.0}), ("pretrained_student", {"student_ppl": 70.0}))
    ]
    first = story.story(pd.concat([several, pd.DataFrame(extra)], ignore_index=True))[0]
    assert first.endswith("Seed by seed (each its own public pretraining): 0.714, 0.857, passing on 1 of 2.")
    assert story.story(pd.DataFrame(columns=["method"])) == []


def test_regime_story_counts_wins_and_explains_each_loss():
    df = rows()
    df = df[df["kind"] != "ablation"]
    extra = [
        {
            "dataset": "builtin",
            "method": "distildp",
            "epsilon": 1.0,
            "seed": 0,
            "student_ppl": p,
            "teacher_marginal_ppl": t,
            "floor": 5.0,
            "kind": "ablation",
            "knob": "synthetic_factor",
            "value": v,
        }
        for v, p, t in ((1.0, 25.0, 24.0), (8.0, 21.0, 15.0))
    ]  # at 1x the DP teacher is above dpsgd's 20
    table = regime.regime_table(pd.concat([df, pd.DataFrame(extra)], ignore_index=True))
    sentences = story.regime_story(table, noise=1.5)
    # cells: eps 1 (12 vs dpsgd 22: -10), eps inf (8 vs 9.5: -1.5, a tie at 1.5), synthetic 1x (+5), 8x (+1: a tie)
    assert sentences[0] == (
        "The regime map has 4 cells (1–3 seeds each), each moving one axis from the embedded "
        "default: DistilDP's student is below the best baseline in 1, above it in 1, and within "
        "±1.50 (a tie) in 2."
    )
    assert sentences[1] == "Widest win: epsilon = 1 (Δ -10.00 against dpsgd)."
    assert sentences[2] == (
        "Behind at synthetic_factor = 1.0: Δ +5.00 against dpsgd, gate 2 failing: the DP teacher is "
        "4.00 above the DP-SGD student, DistilDP's student 1.00 above the teacher, so 5.00 above "
        "DP-SGD."
    )
    assert sentences[3] == "Within the tie band: epsilon = ∞ (Δ -1.50), synthetic_factor = 8.0 (Δ +1.00)."
    # the same from the CSV the runner writes (values and epsilons as text)
    csv_story = story.regime_story(pd.read_csv(pd.io.common.StringIO(table.to_csv(index=False))), noise=1.5)
    assert csv_story == sentences
    assert story.regime_story(table)[0].endswith("below the best baseline in 2, above it in 2.")


def dpopd_rows() -> pd.DataFrame:
    """rows() with DP-OPD at epsilon 1 for each teacher: the non-private teacher's row as a row written before the
    epsilon_covers column existed would read (no column at all)."""
    extra = [
        {
            "dataset": "builtin",
            "method": "dpopd",
            "epsilon": 1.0,
            "seed": seed,
            "student_ppl": 11.0 + seed,
            "teacher_ppl": 9.0,
            "floor": 5.0,
            "opd_teacher": teacher,
        }
        for teacher in ("public", "dp", "nonprivate")
        for seed in range(2)
    ]
    return pd.concat([rows(), pd.DataFrame(extra)], ignore_index=True)


def test_a_row_whose_epsilon_covers_the_student_only_is_marked_in_every_table(tmp_path):
    marked = "dpopd (nonprivate teacher) [epsilon covers student updates only]"
    table = results.ppl_table(dpopd_rows())
    assert {"dpopd (public teacher)", "dpopd (dp teacher)", marked} <= set(table.index)
    assert not any(label.startswith("dpopd") and "nonprivate" in label and label != marked for label in table.index)
    report.write_report(dpopd_rows(), tmp_path / "tables", tmp_path / "figures")
    assert marked in (tmp_path / "tables" / "ppl_vs_eps.md").read_text()
    again = results.read_csv(tmp_path / "tables" / "ppl_vs_eps.csv")
    assert set(again.loc[again["opd_teacher"] == "nonprivate", "method"]) == {marked}  # the CSV's rows too
    # a row that says what its epsilon covers is marked by that, whatever its method
    said = dpopd_rows().assign(epsilon_covers="")
    said.loc[said["method"] == "dpsgd", "epsilon_covers"] = "student updates only"
    assert "dpsgd [epsilon covers student updates only]" in results.ppl_table(said).index
