"""The privacy audit of pipeline methods (distildp.audit.method_audit) and the canary groups it relies on: canaries at
several repeat counts, canary rows kept out of membership inference, a memorising model caught by every test and
a leak above the accounted epsilon refused; the audit grid's rows, table and figures (distildp.audit.audit_report)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from distildp.audit import audit_report, method_audit, mia
from distildp.audit.method_audit import ScoredModel
from distildp.audit.provenance import AuditError, TrainingSet
from distildp.data.loaders import load_corpus
from distildp.data.source import ReviewSource
from distildp.lm.models import build_model, train_tokenizer

CANARY_OPTIONS = {"n_train": 16, "n_val": 8, "n_test": 8, "canaries": 1, "canary_repeats": [1, 3]}


# ------------------------------------------------------------------------------------------------ canary groups
def test_canaries_come_in_groups_of_each_repeat_count():
    corpus = load_corpus(
        "builtin", source=ReviewSource(0), n_train=100, n_val=5, n_test=5, canaries=3, canary_repeats=[1, 4, 16]
    )
    canaries = corpus.canaries
    assert [c["repeats"] for c in canaries] == [1] * 3 + [4] * 3 + [16] * 3
    assert all(len(c["rows"]) == c["repeats"] for c in canaries)
    rows = [r for c in canaries for r in c["rows"]]
    assert len(rows) == len(set(rows)) == 63  # no row holds two secrets
    assert len({c["secret"] for c in canaries}) == 9
    train = corpus.texts("train")
    assert all(train[r].endswith(" " + c["sentence"]) for c in canaries for r in c["rows"])
    assert sum("My secret code is" in t for t in train) == 63
    assert not any("My secret code is" in t for split in ("validation", "test") for t in corpus.texts(split))


def test_one_repeat_count_gives_the_corpus_it_always_gave():
    as_int = load_corpus("builtin", source=ReviewSource(0), n_train=40, n_val=5, n_test=5, canaries=2, canary_repeats=3)
    as_list = load_corpus(
        "builtin", source=ReviewSource(0), n_train=40, n_val=5, n_test=5, canaries=2, canary_repeats=[3]
    )
    assert as_int.texts("train") == as_list.texts("train") and as_int.canaries == as_list.canaries


@pytest.mark.parametrize(
    "repeats, match",
    [
        ([], "non-empty list"),
        ([1, 0], "positive int"),
        (True, "positive int"),
        ([2.5], "positive int"),
        ([1, 4, 16], "need 42 train rows"),
    ],
)
def test_bad_canary_repeats_are_refused_with_the_fix(repeats, match):
    with pytest.raises(ValueError, match=match):
        load_corpus(
            "builtin", source=ReviewSource(0), n_train=40, n_val=5, n_test=5, canaries=2, canary_repeats=repeats
        )


# ------------------------------------------------------------------------------------------------ one model's audit
@pytest.fixture(scope="module")
def memorised():
    """A tiny model trained without DP until it reproduces its 16 training documents (4 hold canaries), and
    the same model untrained as the 'public' one."""
    corpus = load_corpus("builtin", source=ReviewSource(0), **CANARY_OPTIONS)
    texts = corpus.texts("train")
    # trained on held-out text, as the pipeline's is on public text: a tokenizer that had seen a secret would merge
    # its digits into fewer tokens, which makes it likelier under any model
    tok = train_tokenizer(corpus.texts("validation") + corpus.texts("test") + ["0 1 2 3 4 5 6 7 8 9"], vocab_size=400)
    torch.manual_seed(0)
    model = build_model("tiny-student", tok, seed=0, n_embd=48, n_layer=1, n_head=2, n_positions=192)
    public = build_model("tiny-student", tok, seed=1, n_embd=48, n_layer=1, n_head=2, n_positions=192).eval()
    eos = tok.eos_token_id
    rows = [[eos] + ids + [eos] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        optimizer.zero_grad()
        model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        optimizer.step()
    found = TrainingSet(
        "memorised",
        "private_student",
        {},
        texts,
        corpus.prefixes("train"),
        corpus.texts("validation") + corpus.texts("test"),
        corpus.prefixes("validation") + corpus.prefixes("test"),
        corpus.canaries,
    )
    return model.eval(), public, tok, found


CONFIG = method_audit.AuditConfig(n_candidates=200, n_bootstrap=50)


def as_student(accounted: float, what: str) -> dict:
    """audit_model's keywords for a student-role model at delta 1e-3."""
    return {"role": "student", "accounted": accounted, "delta": 1e-3, "config": CONFIG, "what": what}


def test_a_memorising_model_is_caught_by_every_test_and_canary_rows_stay_out_of_the_members(memorised):
    model, public, tok, found = memorised
    row = method_audit.audit_model(
        ScoredModel(model, tok), ScoredModel(public, tok), found, **as_student(math.inf, "memoriser")
    )
    assert [c["repeats"] for c in row["canaries"]] == [1, 3]
    once, thrice = row["canaries"]
    assert thrice["exposure"] > 20 and thrice["public_exposure"] < 5  # ranked among the first of 10^8 candidates
    assert thrice["exposure"] > once["exposure"]  # memorised more, the more often seen
    assert row["loss_n_members"] == 16 - 4 and row["loss_n_nonmembers"] == 16  # the 4 canary rows left out
    assert row["loss_auc"] > 0.95 and row["reference_auc"] > 0.95
    assert row["epsilon_lower_bound"] == max(row["loss_epsilon_lower_bound"], row["reference_epsilon_lower_bound"])
    assert row["epsilon_lower_bound"] > 0.3
    assert set(row["roc"]) == {"loss", "reference"} and row["roc"]["loss"]["tpr"][-1] == pytest.approx(1.0)


def test_a_leak_above_the_accounted_epsilon_is_a_privacy_bug(memorised):
    model, public, tok, found = memorised
    with pytest.raises(mia.PrivacyBugError, match="PRIVACY BUG.*memoriser \\(loss attack\\)"):
        method_audit.audit_model(
            ScoredModel(model, tok), ScoredModel(public, tok), found, **as_student(0.1, "memoriser")
        )


def test_an_untrained_model_shows_nothing(memorised):
    _, public, tok, found = memorised
    row = method_audit.audit_model(
        ScoredModel(public, tok), ScoredModel(public, tok), found, **as_student(1.0, "untrained")
    )
    assert all(c["exposure"] == pytest.approx(c["public_exposure"]) for c in row["canaries"])
    assert row["reference_auc"] == 0.5  # target and reference are one model: every score is 0
    assert row["epsilon_lower_bound"] == 0.0


def test_only_pipeline_methods_are_audited():
    with pytest.raises(AuditError, match="covers the methods"):
        method_audit.accounted_epsilon(None, "nonprivate_teacher", 2.0)


@pytest.mark.parametrize("teacher", ["public", "dp", "nonprivate"])
def test_dpopd_models_are_held_to_the_epsilon_that_covers_them_end_to_end(teacher):
    """A DP teacher or a public one: DP-OPD's models are held to its composed epsilon; a non-private teacher read the
    private data without DP, so the student's epsilon (its own updates) bounds nothing end to end: inf."""
    from distildp.pipeline import Pipeline
    from distildp.pipeline.settings import make_settings

    pipe = Pipeline(make_settings("smoke", {"opd_teacher": teacher}), progress=False)
    accounted = method_audit.accounted_epsilon(pipe, "dpopd", 2.0)
    if teacher == "nonprivate":
        assert accounted == math.inf and list(pipe.plan("dpopd", 2.0).mechanisms) == ["student"]
    else:
        assert accounted == pytest.approx(pipe.plan("dpopd", 2.0).epsilon) and accounted <= 2.0
    assert method_audit.accounted_epsilon(pipe, "dpopd", math.inf) == math.inf


# ------------------------------------------------------------------------------------------------ the grid's report
def fake_model_row(method, epsilon, model, exposure, auc, bound, variant=None, **extra):
    row = {
        "method": method,
        "epsilon": epsilon,
        "epsilon_accounted": epsilon * 0.99 if math.isfinite(epsilon) else "inf",
        "delta": 1e-4,
        "seed": 0,
        "model": model,
        "stage": "x",
        "artifact": "x/0",
        "test_ppl": 90.0,
        "trained_on": "private text",
        "max_exposure": math.log2(1e8),
        "n_canaries": 2,
        **extra,
    }
    if variant is not None:
        row["variant"] = variant
    if model == "synthetic":
        return {
            **row,
            "test_ppl": "nan",
            "n_texts": 10,
            "secrets_reproduced": 1,
            "canaries": [
                {"secret": "1", "repeats": 1, "texts_with_secret": 0},
                {"secret": "2", "repeats": 4, "texts_with_secret": 2},
            ],
        }
    curve = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, auc, 1.0]}
    return {
        **row,
        "canaries": [
            {"secret": "1", "repeats": 1, "exposure": exposure, "public_exposure": 2.0, "rank": 9},
            {"secret": "2", "repeats": 4, "exposure": exposure + 4, "public_exposure": 3.0, "rank": 1},
        ],
        "roc": {"loss": curve, "reference": curve},
        "epsilon_lower_bound": bound,
        **{
            f"{a}_{k}": v
            for a in ("loss", "reference")
            for k, v in (
                ("auc", auc),
                ("auc_low", auc - 0.02),
                ("auc_high", auc + 0.02),
                ("tpr_at_0.01", 0.01),
                ("epsilon_lower_bound", bound),
            )
        },
    }


def fake_points():
    return pd.DataFrame(
        [
            {
                "method": "distildp",
                "epsilon": 2.0,
                "kind": "main",
                "audits": [
                    fake_model_row("distildp", 2.0, "teacher", 1.0, 0.51, 0.0),
                    fake_model_row("distildp", 2.0, "synthetic", 0, 0, 0),
                    fake_model_row("distildp", 2.0, "student", 0.5, 0.50, 0.0),
                ],
            },
            {
                "method": "dpsgd",
                "epsilon": "inf",
                "kind": "ablation",
                "knob": "teacher_train.batch_size",
                "value": 32,
                "audits": [fake_model_row("dpsgd", math.inf, "student", 20.0, 0.9, 1.7)],
            },
            {"method": "dpsgd", "epsilon": "inf", "kind": "main", "audits": None},  # an unfinished point
            {
                "method": "dpopd",
                "epsilon": 2.0,
                "kind": "ablation",
                "knob": "opd_teacher",
                "value": "nonprivate",
                "audits": [
                    fake_model_row("dpopd", 2.0, model, 9.0, 0.7, 1.1, opd_teacher="nonprivate", **NOT_COVERED)
                    for model in ("teacher", "student")
                ],
            },
        ]
    )


# what audit_method records for DP-OPD with a non-private teacher: its epsilon, what it covers, the end-to-end bound
NOT_COVERED = {"epsilon_spent": 2.0, "epsilon_covers": "student updates only", "epsilon_accounted": "inf"}


def test_audit_rows_table_and_report(tmp_path):
    rows = audit_report.audit_rows(fake_points())
    assert list(rows["model"]) == ["teacher", "synthetic", "student", "student", "teacher", "student"]
    assert list(rows["variant"])[:4] == ["", "", "", "teacher_train.batch_size=32"]
    assert rows["epsilon_accounted"].iloc[3] == math.inf and math.isnan(rows["test_ppl"].iloc[1])
    table = audit_report.audit_table(rows)
    # a non-private teacher's rows carry their mark (never shown as 2-DP) and are held to infinity
    opd = table[table["method"].str.startswith("dpopd")]
    assert set(opd["method"]) == {"dpopd (nonprivate teacher) [epsilon covers student updates only]"}
    assert list(opd["ε accounted"]) == ["∞", "∞"] and list(opd["ε target"]) == ["2", "2"]
    assert list(table.columns[:5]) == ["method", "ε target", "model", "exposure ×1", "exposure ×4"]
    ablation = table[table["method"] == "dpsgd [teacher_train.batch_size=32]"].iloc[0]
    assert ablation["exposure ×4"] == "24.0 (3.0)" and ablation["ε accounted"] == "∞"
    assert ablation["ε lower bound"] == "1.70" and ablation["loss AUC"] == "0.900 [0.880, 0.920]"
    synthetic = table[table["model"] == "synthetic"].iloc[0]
    assert synthetic["exposure ×1"] == "0/1 verbatim" and synthetic["exposure ×4"] == "1/1 verbatim"
    written = audit_report.write_audit_report(fake_points(), tmp_path / "tables", tmp_path / "figures")
    assert {p.name for p in written} == {
        "audit_rows.json",
        "audit.csv",
        "audit.md",
        "audit_exposure.png",
        "audit_roc.png",
        "audit_epsilon.png",
    }
    assert all(p.stat().st_size > 0 for p in written)
    again = audit_report.read_audit_rows(tmp_path / "tables")
    pd.testing.assert_frame_equal(
        again[rows.columns].drop(columns=["canaries", "roc"]), rows.drop(columns=["canaries", "roc"]), check_dtype=False
    )
    assert again["roc"].iloc[0] == rows["roc"].iloc[0]
    assert "| distildp" in (tmp_path / "tables" / "audit.md").read_text()
    with pytest.raises(AuditError, match="run the audit grid first"):
        audit_report.read_audit_rows(tmp_path / "nothing")
    with pytest.raises(AuditError, match="not written by notebooks/08"):
        audit_report.audit_rows(pd.DataFrame([{"method": "dpsgd"}]))


def test_roc_points_follow_the_curve():
    rng = np.random.default_rng(0)
    curve = method_audit.roc_points(rng.normal(1, 1, 500), rng.normal(0, 1, 500))
    assert curve["fpr"][0] == 0 and curve["fpr"][-1] == 1 and curve["tpr"][-1] == 1
    assert np.all(np.diff(curve["tpr"]) >= 0) and len(curve["fpr"]) <= method_audit.ROC_POINTS + 1
