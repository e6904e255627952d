"""Bringing your own data: coded public text from a labelled CSV, long documents against the context, the label
split's disjointness checked before any work, and the check before the spend (distildp.pipeline.preflight)."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distildp.core.artifacts import ArtifactStore
from distildp.data.corpus import control_prefix
from distildp.data.label_split import split_by_label
from distildp.data.lengths import fit_corpus, token_lengths
from distildp.data.loaders import load_corpus, load_public
from distildp.lm.models import train_tokenizer
from distildp.pipeline import Pipeline, preflight
from distildp.pipeline.cli import main as pipeline_main
from distildp.pipeline.settings import make_settings

# the smoke profile's built-in corpus sizes do not apply to a csv corpus: make_settings says so and drops them
pytestmark = pytest.mark.filterwarnings("ignore:profile 'smoke'.*do not apply:UserWarning")
REAL_TEXT = Path(__file__).resolve().parent / "fixtures" / "real_text"
PUBLIC_LABELS = ["asyncio", "email", "logging", "unittest"]


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """The real-text fixture split by module: the four largest modules public, the rest private."""
    root = tmp_path_factory.mktemp("own_data")
    split_by_label(REAL_TEXT, root / "private", root / "public", "label_module", public_labels=PUBLIC_LABELS)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(pd.read_csv(REAL_TEXT / "train.csv")["text"].tolist(), vocab_size=512)


def test_public_csv_labels_become_codes_in_the_private_format(own_data):
    public = load_public(f"csv:{own_data / 'public'}", n_docs=None, n_val=20, coded_share=1.0)
    assert all(public.train_prefixes) and all(public.validation_prefixes)
    assert public.train_prefixes[0].startswith("Module: ") and "\tKind: " in public.train_prefixes[0]
    assert public.info["n_coded"] == len(public.train) and public.info["label_split"]["disjoint"] is True
    modules = {p.split("\t")[0].removeprefix("Module: ") for p in public.train_prefixes}
    assert modules == set(PUBLIC_LABELS)
    private = load_corpus(f"csv:{own_data / 'private'}")
    # the same form: names in the same order, values of the other side's labels
    assert [k.split(": ")[0] for k in private.prefixes("train")[0].split("\t")] == ["Module", "Kind"]
    assert private.info["label_split"]["public_labels"] == PUBLIC_LABELS


def test_coded_share_is_a_share_of_the_labelled_documents(own_data):
    folder = f"csv:{own_data / 'public'}"
    half = load_public(folder, n_docs=None, n_val=20, coded_share=0.5)
    assert 0.4 < np.mean([bool(p) for p in half.train_prefixes]) < 0.6
    assert load_public(folder, n_docs=None, n_val=20, coded_share=0.5).train_prefixes == half.train_prefixes
    assert not any(load_public(folder, n_val=20, coded_share=0.0).train_prefixes)
    plain = load_public(folder, n_val=20, coded_share=1.0, label_columns=[])
    assert not any(plain.train_prefixes) and plain.info["coded_share"] == 0.0
    with pytest.raises(ValueError, match=r"no label column\(s\) \['label_topic'\].*label_columns"):
        load_public(folder, label_columns=["label_topic"])


def test_a_document_with_an_empty_label_is_written_without_codes(tmp_path):
    pd.DataFrame({"text": ["one doc here", "another doc"], "label": ["a", ""]}).to_csv(tmp_path / "train.csv")
    pd.DataFrame({"text": ["held out"], "label": ["b"]}).to_csv(tmp_path / "val.csv")
    public = load_public(f"csv:{tmp_path}", n_docs=None, coded_share=1.0)
    assert public.train_prefixes == [control_prefix({"Label": "a"}), ""]


def test_long_documents_are_refused_with_the_fix(own_data, tokenizer):
    corpus = load_corpus(f"csv:{own_data / 'private'}")
    with pytest.raises(ValueError, match=r"longer than max_length=128 tokens.*long_documents: truncate"):
        fit_corpus(corpus, tokenizer, 128, "refuse")
    assert fit_corpus(corpus, tokenizer, 100_000, "refuse") is corpus  # nothing long: the corpus as it is


def test_truncation_fits_every_document_and_keeps_short_ones(own_data, tokenizer):
    corpus = load_corpus(f"csv:{own_data / 'private'}")
    with pytest.warns(UserWarning, match=r"in train.* are longer than 64 tokens: each is cut"):
        fitted = fit_corpus(corpus, tokenizer, 64, "truncate")
    for split in ("train", "validation", "test"):
        before = token_lengths(tokenizer, corpus.texts(split), corpus.prefixes(split))
        after = token_lengths(tokenizer, fitted.texts(split), fitted.prefixes(split))
        assert after.max() <= 64 and len(after) == len(before)  # cut, never chunked: one record per document
        short = before <= 64
        kept = [t for t, s in zip(fitted.texts(split), short) if s]
        assert kept == [t for t, s in zip(corpus.texts(split), short) if s]
        assert all(corpus.texts(split)[i].startswith(fitted.texts(split)[i][:20]) for i in np.flatnonzero(~short))
    assert fitted.info["lengths"]["before"]["train"]["over"] > 0


def test_truncate_training_keeps_documents_whole_for_evaluation(own_data, tokenizer, tmp_path):
    corpus = load_corpus(f"csv:{own_data / 'private'}")
    with pytest.warns(UserWarning, match="training reads their first tokens, evaluation all of them"):
        kept = fit_corpus(corpus, tokenizer, 128, "truncate_training")
    assert kept.splits is corpus.splits and kept.info["lengths"]["long_documents"] == "truncate_training"
    overrides = {"dataset": f"csv:{own_data / 'private'}", "long_documents": "truncate_training", "max_length": 64}
    with pytest.raises(ValueError, match="to cut them at max_length=64 use long_documents='truncate'"):
        Pipeline(make_settings("smoke", overrides), ArtifactStore(tmp_path)).max_length  # noqa: B018


def test_truncating_the_builtin_corpus_drops_its_floor_but_keeps_its_schema(tokenizer):
    corpus = load_corpus("builtin", n_train=50, n_val=10, n_test=10)
    with pytest.warns(UserWarning, match="are longer than 48 tokens"):
        fitted = fit_corpus(corpus, tokenizer, 48, "truncate")
    assert fitted.source is None and corpus.source is not None
    assert fitted.public_code_keys() == (corpus.public_code_keys()[0], [])


def test_a_public_split_sharing_private_labels_is_refused_before_any_work(own_data, tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    shutil.copytree(own_data / "private", private)
    shutil.copytree(own_data / "public", public)
    overrides = {"dataset": f"csv:{private}", "public_corpus": f"csv:{public}", "dataset_options": {}}
    make_settings("smoke", overrides)  # disjoint as split
    with open(public / "train.csv", "a") as f:
        f.write('"A leaked private document about json.",json,function\n')
    with pytest.raises(ValueError, match=r"share 1 value\(s\) of `label_module`: 'json'"):
        make_settings("smoke", overrides)


def test_the_pipeline_refuses_long_documents_before_pretraining(own_data, tmp_path):
    overrides = {
        "dataset": f"csv:{own_data / 'private'}",
        "public_corpus": f"csv:{own_data / 'public'}",
        "long_documents": "refuse",  # the smoke profile evaluates long built-in documents whole
    }
    settings = make_settings("smoke", overrides)
    pipe = Pipeline(settings, ArtifactStore(tmp_path / "store"), progress=False)
    with pytest.raises(ValueError, match="long_documents: truncate"):
        pipe.artifacts("dpsgd", 2.0)
    assert not (tmp_path / "store" / "pretrained").exists() or not any((tmp_path / "store" / "pretrained").iterdir())


def test_max_length_beyond_the_context_is_refused(own_data, tmp_path):
    settings = make_settings("smoke", {"dataset": f"csv:{own_data / 'private'}", "max_length": 4096})
    with pytest.raises(ValueError, match="exceeds the models' context of 128"):
        Pipeline(settings, ArtifactStore(tmp_path)).max_length  # noqa: B018


def test_recommendation_follows_the_regime_map():
    assert preflight.recommendation(1.1, True, 0.5, True, 4000).startswith("Gate 1 fails")
    assert preflight.recommendation(0.7, True, 0.9, True, 4000).startswith("DistilDP")
    assert "shrinks" in preflight.recommendation(0.7, True, 0.9, True, 500)
    assert preflight.recommendation(0.7, False, 0.9, True, 4000).startswith("DP-SGD")
    assert preflight.recommendation(0.7, True, 2.2, True, 4000).startswith("DP-SGD")  # the format not learnt
    assert "no label columns" in preflight.recommendation(0.7, True, 0.9, False, 4000)


def test_the_check_before_the_spend_on_real_text(own_data, tmp_path, capsys):
    """The smoke profile's check: refused while documents are long, then the full report with truncation."""
    args = [
        "--profile",
        "smoke",
        "--store",
        str(tmp_path / "store"),
        "--dataset",
        f"csv:{own_data / 'private'}",
        "--public",
        f"csv:{own_data / 'public'}",
        "--check",
    ]
    assert pipeline_main([*args, "--long-documents", "refuse"]) == 0
    out = capsys.readouterr().out
    assert "refused:" in out and "over the limit" in out
    assert not (tmp_path / "store" / "pretrained").exists()
    assert pipeline_main([*args, "--long-documents", "truncate"]) == 0
    out = capsys.readouterr().out
    for expected in ("gate 1: pretrained teacher / student", "code-format probe", "DP teacher", "recommendation: "):
        assert expected in out
    assert "behind codes" in out and "0 of them behind codes" not in out


@pytest.mark.slow  # about a minute on 2 cores
def test_distildp_runs_end_to_end_on_real_text_with_coded_public_text(own_data, tmp_path):
    overrides = {
        "dataset": f"csv:{own_data / 'private'}",
        "public_corpus": f"csv:{own_data / 'public'}",
        "long_documents": "truncate",
    }
    pipe = Pipeline(make_settings("smoke", overrides), ArtifactStore(tmp_path), progress=False)
    assert any(pipe.public.train_prefixes)
    row = pipe.run("distildp", 2.0)
    assert np.isfinite(row["student_ppl"]) and abs(row["epsilon_spent"] - 2.0) < 0.01
    teacher = pipe.artifacts("distildp", 2.0)["teacher"]
    data = teacher.manifest["config"]["data"]
    assert data["lengths"] == {"max_length": 128, "long_documents": "truncate"}
    assert data["label_split"]["public_labels"] == PUBLIC_LABELS
    # the stage factors the check's estimates use, measured from this store: DistilDP's stages only
    factors = preflight.calibrate(pipe, tmp_path)
    for stage in ("DP teacher", "synthetic text", "distilled student (KD)"):
        assert 0 < factors[stage] < np.inf
    assert np.isnan(factors["DP-SGD student"])


def test_stage_estimates_are_work_at_the_measured_rate(tmp_path):
    """Each stage's estimate is its tokens x its model's pretraining seconds per token x its factor: twice the
    epochs, twice the time; a DP teacher priced at the teacher's rate, students at the student's."""
    settings = make_settings("smoke")
    pipe = Pipeline(settings, ArtifactStore(tmp_path), progress=False)
    ones = dict.fromkeys(preflight.STAGE_FACTORS, 1.0)
    base = preflight.estimates(pipe, {"teacher": 1e-3, "student": 1e-4}, ones)
    work = {w.stage: w for w in preflight.stage_work(pipe)}
    assert base["DP teacher"] == pytest.approx(work["DP teacher"].tokens * 1e-3)
    assert base["DP-SGD student"] == pytest.approx(work["DP-SGD student"].tokens * 1e-4)
    n = len(pipe.corpus.texts("train"))
    assert work["DP teacher"].tokens > settings.teacher_train.epochs * n * 2  # [eos] twice, codes and text
    longer = Pipeline(make_settings("smoke", {"teacher_train": {"epochs": 2}}), ArtifactStore(tmp_path), progress=False)
    assert preflight.estimates(longer, {"teacher": 1e-3, "student": 1e-4}, ones)["DP teacher"] == pytest.approx(
        2 * base["DP teacher"]
    )


def test_a_saved_model_directory_gives_its_context_and_tokenizer(tokenizer, tmp_path):
    """A teacher_model given as a save_pretrained directory (a hub model's shape): its context and tokenizer are
    read without loading weights, so documents are measured against them."""
    from distildp.lm.models import build_model, load_pretrained_tokenizer, model_context

    build_model("tiny-student", tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert model_context(str(tmp_path)) == 128 == model_context("tiny-teacher")
    assert (
        load_pretrained_tokenizer(tmp_path)("a test", add_special_tokens=False)["input_ids"]
        == tokenizer("a test", add_special_tokens=False)["input_ids"]
    )
