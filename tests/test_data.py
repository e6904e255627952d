"""Corpora: the built-in private corpus, public text, CSV folders, hub-schema loaders and their errors."""

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distildp.core import hub
from distildp.data import hub_corpora, loaders
from distildp.data.corpus import control_prefix, display_name
from distildp.data.lexicon import BORROWED_ASPECTS, CATEGORY_ASPECTS, PRIVATE_CATEGORIES, PUBLIC_CATEGORIES
from distildp.data.loaders import load_corpus, load_public
from distildp.data.source import ReviewSource
from distildp.pipeline.settings import make_settings

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = dict(n_train=60, n_val=20, n_test=20)


@pytest.fixture(scope="module")
def source():
    return ReviewSource(0)


@pytest.fixture(scope="module")
def builtin(source):
    return load_corpus("builtin", source=source, **SMALL)


def test_control_prefix_format():
    assert (
        control_prefix({"Business Category": "Restaurants", "Review Stars": "5.0"})
        == "Business Category: Restaurants\tReview Stars: 5.0\n\n"
    )


def test_builtin_corpus_shape_and_codes(builtin):
    assert builtin.source is not None
    assert {s: len(df) for s, df in builtin.splits.items()} == {"train": 60, "validation": 20, "test": 20}
    assert builtin.code_columns == {
        "label_business_category": "Business Category",
        "label_review_stars": "Review Stars",
    }
    codes = builtin.codes("test")
    assert set(c["Business Category"] for c in builtin.codes("train")) <= set(PRIVATE_CATEGORIES)
    assert builtin.prefixes("test")[0] == control_prefix(codes[0])
    assert np.all(np.isfinite(builtin.source.log_prob_batch(builtin.texts("test"), codes)))


def test_builtin_splits_are_deterministic_disjoint_and_stable(source, builtin):
    again = load_corpus("builtin", source=source, **SMALL)
    for split in builtin.splits:
        pd.testing.assert_frame_equal(builtin.splits[split], again.splits[split])
    sets = {s: set(builtin.texts(s)) for s in builtin.splits}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["test"])
    assert not (sets["validation"] & sets["test"])
    bigger = load_corpus("builtin", source=source, n_train=120, n_val=20, n_test=20)
    assert bigger.texts("test") == builtin.texts("test")  # test depends only on seed and n_test
    other = load_corpus("builtin", source=source, seed=1, **SMALL)
    assert other.texts("test") != builtin.texts("test")


def test_builtin_dedupes_across_splits():
    """A source with few possible texts forces collisions; the splits must still come out disjoint."""
    tiny = ReviewSource.tiny(0)
    corpus = load_corpus("builtin", source=tiny, categories=["Restaurants"], n_train=30, n_val=10, n_test=10)
    sets = {s: set(corpus.texts(s)) for s in corpus.splits}
    assert not (sets["train"] & (sets["validation"] | sets["test"])) and not (sets["validation"] & sets["test"])
    assert len(corpus.splits["train"]) == 30


def test_canaries_are_recorded_and_only_in_train(source):
    corpus = load_corpus("builtin", source=source, canaries=3, canary_repeats=4, **SMALL)
    assert len(corpus.canaries) == 3
    train = corpus.texts("train")
    for canary in corpus.canaries:
        hits = [i for i, t in enumerate(train) if canary["sentence"] in t]
        assert hits == canary["rows"] and len(hits) == 4
        assert corpus.source.log_prob(train[hits[0]], corpus.codes("train")[hits[0]]) == -np.inf
    assert not any("secret" in t for s in ("validation", "test") for t in corpus.texts(s))
    with pytest.raises(ValueError, match="canaries"):
        load_corpus("builtin", source=source, canaries=30, canary_repeats=5, **SMALL)


def test_builtin_public_corpus_covers_the_private_domain_but_not_its_categories_or_texts(source, builtin):
    public = load_public("builtin", n_docs=3000, n_val=300, source=source)
    assert public.train == load_public("builtin", n_docs=3000, n_val=300, source=source).train
    assert any("Python" in t for t in public.train) and any("Python" in t for t in public.validation)  # prose
    assert not set(public.train) & set(public.validation)
    private = {t for s in builtin.splits for t in builtin.texts(s)}
    assert not private & (set(public.train) | set(public.validation))
    assert not set(PUBLIC_CATEGORIES) & set(PRIVATE_CATEGORIES)
    # every word of a private category's aspects is written about in public reviews (in-domain pretraining),
    # and the public categories borrow each private aspect exactly once
    words = lambda texts: {w.strip(".,!?").lower() for t in texts for w in t.split()}  # noqa: E731
    lexicon = lambda cats: {w for c in cats for ws in CATEGORY_ASPECTS[c].values() for w in ws}  # noqa: E731
    assert lexicon(PRIVATE_CATEGORIES) <= words(public.train)
    borrowed = [pair for pairs in BORROWED_ASPECTS.values() for pair in pairs]
    assert sorted(borrowed) == sorted(
        (c, a) for c in PRIVATE_CATEGORIES for a in CATEGORY_ASPECTS[c] if not a.endswith(")")
    )


def test_prose_public_corpus_is_python_docs_only():
    prose = load_public("prose")
    assert sorted(prose.train + prose.validation) == sorted(set(loaders.pydoc_paragraphs()))
    assert prose.info["n_reviews"] == 0


def test_public_corpus_from_csv_and_hub_files(tmp_path):
    csv_public = load_public(f"csv:{FIXTURES / 'public_csv'}", text_column="body", n_val=1)
    assert len(csv_public.validation) == 1 and len(csv_public.train) == 7
    assert "The library extended its opening hours." in csv_public.train + csv_public.validation
    with pytest.raises(ValueError, match="no `text` column"):
        load_public(f"csv:{FIXTURES / 'public_csv'}")
    with pytest.raises(FileNotFoundError, match="train.csv"):
        load_public(f"csv:{tmp_path}")
    files = {s: str(FIXTURES / "wikitext" / f"{s}.jsonl") for s in ("train", "validation")}
    hub = load_public("hub:wikitext:wikitext-2-raw-v1", data_files=files, cache_dir=str(tmp_path), n_docs=4)
    assert len(hub.train) == 4 and "" not in hub.train  # empty lines dropped
    assert hub.validation[0] == "Volunteers cleaned the beach on Saturday morning."
    with pytest.raises(ValueError, match="unknown public corpus"):
        load_public("wikipedia")
    with pytest.raises(ValueError, match="takes no options"):
        load_public("builtin", text_column="body")


def test_code_keys_are_the_public_schema_where_one_is_known(builtin):
    counts = builtin.code_counts("train")
    assert sum(counts.values()) == 60
    assert counts == Counter(tuple(c.values()) for c in builtin.codes("train"))
    keys, notes = builtin.public_code_keys()
    assert keys == [(c, s) for c in builtin.info["categories"] for s in builtin.source.stars] and notes == []
    assert set(counts) <= set(keys) and len(keys) > len(counts)  # codes no document carries are keys too
    assert builtin.code_prefix(tuple(builtin.codes("test")[0].values())) == builtin.prefixes("test")[0]


def test_code_keys_read_off_the_training_split_say_so():
    corpus = load_corpus(f"csv:{FIXTURES / 'csv_corpus'}")
    keys, notes = corpus.public_code_keys()
    assert keys == sorted(corpus.code_counts("train")) and keys == sorted(set(keys))
    assert len(notes) == 1 and "not protected" in notes[0]


def test_csv_dir_happy_path():
    corpus = load_corpus(f"csv:{FIXTURES / 'csv_corpus'}")
    assert corpus.code_columns == {"label_business_category": "Business Category", "label_review_stars": "Review Stars"}
    assert list(corpus.splits["train"].columns) == ["text", "label_business_category", "label_review_stars"]
    assert corpus.codes("validation") == [{"Business Category": "Beauty & Spas", "Review Stars": "4.0"}]
    assert corpus.texts("train")[1] == "Rude staff, dirty room!"
    assert corpus.source is None


def test_display_names():
    assert display_name("label_business_category") == "Business Category"
    assert display_name("label1") == "Label 1"
    assert display_name("label") == "Label"


def write_dir(tmp_path, train=None, val=None, test=None, val_name="val.csv"):
    good = "text,label_x\nhello there,a\n"
    for name, content in (("train.csv", train), (val_name, val), ("test.csv", test)):
        if content is not False:
            (tmp_path / name).write_text(good if content is None else content)
    return f"csv:{tmp_path}"


def test_csv_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(f"csv:{tmp_path / 'nowhere'}")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing .*test.csv"):
        load_corpus(write_dir(tmp_path / "a", test=False))
    (tmp_path / "b").mkdir()
    write_dir(tmp_path / "b")
    (tmp_path / "b" / "validation.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="both val.csv and validation.csv"):
        load_corpus(f"csv:{tmp_path / 'b'}")
    cases = {
        "notext": (dict(train="body,label_x\nhi,a\n"), r"train.csv has no `text` column"),
        "empty": (
            dict(test='text,label_x\nok,a\n  ,b\n"",c\n'),
            r"test.csv: column `text` is empty .* 2 row\(s\) \(file lines 3, 4",
        ),
        "emptylabel": (dict(val="text,label_x\nok,\n"), r"val.csv: column `label_x` is empty"),
        "labels": (dict(test="text,label_y\nok,a\n"), "label columns differ"),
        "headeronly": (dict(train=""), r"cannot read .*train.csv"),
    }
    for name, (files, message) in cases.items():
        (tmp_path / name).mkdir()
        with pytest.raises(ValueError, match=message):
            load_corpus(write_dir(tmp_path / name, **files))
    (tmp_path / "binary").mkdir()
    write_dir(tmp_path / "binary")
    (tmp_path / "binary" / "train.csv").write_bytes(b"text\n\xff\xfe\xfa bad bytes\n")
    with pytest.raises(ValueError, match=r"cannot read .*train.csv"):
        load_corpus(f"csv:{tmp_path / 'binary'}")
    (tmp_path / "validation").mkdir()
    corpus = load_corpus(write_dir(tmp_path / "validation", val_name="validation.csv"))
    assert corpus.texts("validation") == ["hello there"]


def test_unknown_corpus_lists_known_ones():
    with pytest.raises(ValueError, match="known: builtin, csv:<dir>, yelp, big_patent, dbpedia_14"):
        load_corpus("imdb")


def test_hub_schema_mappings_on_local_fixtures(tmp_path):
    yelp_files = {s: str(FIXTURES / "yelp_review_full" / f"{s}.jsonl") for s in ("train", "test")}
    yelp = load_corpus("yelp", data_files=yelp_files, cache_dir=str(tmp_path), val_fraction=0.25)
    assert yelp.code_columns == {"label_review_stars": "Review Stars"}
    assert len(yelp.splits["validation"]) == 1 and len(yelp.splits["train"]) == 3
    assert yelp.codes("test") == [{"Review Stars": "2.0"}]
    stars = sorted(c["Review Stars"] for s in ("train", "validation") for c in yelp.codes(s))
    assert stars == ["1.0", "3.0", "4.0", "5.0"]

    db_files = {s: str(FIXTURES / "dbpedia_14" / f"{s}.jsonl") for s in ("train", "test")}
    db = load_corpus("dbpedia_14", data_files=db_files, cache_dir=str(tmp_path), val_fraction=0.34)
    everything = {t: c["Class"] for s in db.splits for t, c in zip(db.texts(s), db.codes(s))}
    assert everything["Acme Corp is a company that makes anvils."] == "Company"
    assert everything["Moby-Dick is an 1851 novel by Herman Melville."] == "WrittenWork"
    assert db.codes("test") == [{"Class": "Village"}]

    files = {
        sec: {s: str(FIXTURES / "big_patent" / f"{sec}_{s}.jsonl") for s in ("train", "validation", "test")}
        for sec in ("a", "h")
    }
    bp = load_corpus("big_patent", data_files=files, cache_dir=str(tmp_path))
    assert bp.code_columns == {"label_cpc_section": "CPC Section"}
    assert dict(zip(bp.texts("test"), (c["CPC Section"] for c in bp.codes("test")))) == {
        "A toothbrush with a replaceable head. (test)": "Human Necessities",
        "A circuit for charging a battery. (test)": "Electricity",
    }


def test_hub_loaders_take_the_split_options_by_name_and_type(tmp_path):
    for name in ("yelp", "big_patent", "dbpedia_14"):
        assert {"seed", "val_fraction", "n_train", "n_val", "n_test", "cache_dir"} <= set(loaders.corpus_options(name))
    with pytest.raises(ValueError, match=r"dataset_options.n_test must be int or None, got str '5'"):
        make_settings("smoke", {"dataset": "dbpedia_14", "dataset_options": {"n_test": "5"}})
    with pytest.raises(ValueError, match=r"\['n_trian'\] do not apply to dataset 'big_patent'"):
        make_settings("smoke", {"dataset": "big_patent", "dataset_options": {"n_trian": 5}})
    files = {s: str(FIXTURES / "dbpedia_14" / f"{s}.jsonl") for s in ("train", "test")}
    small = load_corpus("dbpedia_14", data_files=files, cache_dir=str(tmp_path), n_train=2, n_test=1, seed=3)
    assert [len(small.splits[s]) for s in ("train", "test")] == [2, 1]


def test_yelp_csv_folder_is_the_distildp_shape():
    corpus = load_corpus("yelp", data_dir=str(FIXTURES / "csv_corpus"))
    assert corpus.name == "yelp" and "Business Category" in corpus.code_columns.values()


def test_hub_loader_fails_fast_and_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"(?s)dbpedia_14.*offline.*data_files"):
        load_corpus("dbpedia_14", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 30


def test_hub_loader_fails_fast_when_unreachable(monkeypatch):
    monkeypatch.setattr(hub_corpora, "datasets_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ConnectionError, match=r"(?s)unreachable.*HF_DATASETS_OFFLINE=1"):
        load_corpus("yelp")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_corpus("dbpedia_14", data_files={"train": "/nonexistent.jsonl"})
