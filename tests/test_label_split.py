"""Splitting a labelled CSV corpus by label into private and public parts (`distildp.data.label_split`), and the
real-English fixture (`tests/fixtures/real_text`) it is tried on."""

import hashlib
import json
from pathlib import Path

import pytest

from distildp.data import label_split
from distildp.data.csv_corpus import read_csv
from distildp.data.label_split import SPLIT_RECORD, check_disjoint, main, read_split_record, split_by_label
from distildp.data.loaders import load_corpus, load_public

REAL_TEXT = Path(__file__).parent / "fixtures" / "real_text"
HEADER = "text,label_topic,label_tone\n"
TINY = {
    "train.csv": HEADER + "apple pie,a,x\nbanana bread,b,y\ncherry tart,c,x\napricot jam,a,y\n",
    "val.csv": HEADER + "avocado,a,x\nblueberry,b,y\ncranberry,c,x\n",
    "test.csv": HEADER + '"almond, roasted",a,y\nblackberry,b,x\ncoconut,c,y\n',
}


def write_corpus(folder: Path, files: dict[str, str] = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return folder


def texts(path: Path) -> list[str]:
    return read_csv(path)["text"].tolist()


def test_split_writes_the_rows_of_each_part_and_the_same_record_into_both(tmp_path):
    source = write_corpus(tmp_path / "source")
    private, public = tmp_path / "private", tmp_path / "public"
    record = split_by_label(source, private, public, "label_topic", public_labels=["b"])

    assert sorted(p.name for p in private.iterdir()) == ["split.json", "test.csv", "train.csv", "val.csv"]
    assert sorted(p.name for p in public.iterdir()) == ["split.json", "train.csv", "val.csv"]
    assert texts(private / "train.csv") == ["apple pie", "cherry tart", "apricot jam"]
    assert texts(private / "val.csv") == ["avocado", "cranberry"]
    assert texts(private / "test.csv") == ["almond, roasted", "coconut"]
    assert texts(public / "train.csv") == ["banana bread", "blackberry"]  # the source's train, then its test
    assert texts(public / "val.csv") == ["blueberry"]
    assert list(read_csv(public / "train.csv").columns) == ["text", "label_topic", "label_tone"]  # labels kept

    assert read_split_record(private) == read_split_record(public) == record
    assert record["column"] == "label_topic" and record["disjoint"] is True
    assert record["public_labels"] == ["b"] and record["private_labels"] == ["a", "c"]
    assert record["source"] == str(source.resolve())
    assert "not a privacy boundary" in record["note"]
    assert "seed" not in record and "public_fraction" not in record  # only a drawn split has them
    assert record["counts"] == {
        "private": {"train.csv": 3, "val.csv": 2, "test.csv": 2},
        "public": {"train.csv": 2, "val.csv": 1},
    }
    for part, folder in (("private", private), ("public", public)):
        for name, digest in record["sha256"][part].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert read_split_record(source) is None


def test_split_of_the_real_text_fixture_keeps_every_document_once_and_the_labels_apart(tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    split_by_label(REAL_TEXT, private, public, "label_module", public_labels=["email", "json"])

    source_rows = sorted(
        tuple(row) for name in ("train.csv", "val.csv", "test.csv") for row in read_csv(REAL_TEXT / name).values
    )
    private_frames = [read_csv(private / n) for n in ("train.csv", "val.csv", "test.csv")]
    public_frames = [read_csv(public / n) for n in ("train.csv", "val.csv")]
    written_rows = sorted(tuple(row) for frame in private_frames + public_frames for row in frame.values)
    assert written_rows == source_rows
    private_labels = {v for frame in private_frames for v in frame["label_module"]}
    public_labels = {v for frame in public_frames for v in frame["label_module"]}
    assert public_labels == {"email", "json"} and not private_labels & public_labels
    check_disjoint(private, public)

    # the parts load as a private corpus and as public text
    corpus = load_corpus(f"csv:{private}", code_names={"label_module": "Module", "label_kind": "Kind"})
    assert {c["Module"] for c in corpus.codes("train")} == private_labels
    assert len(load_public(f"csv:{public}", n_docs=None).train) == len(public_frames[0])


def test_public_fraction_draws_the_same_labels_per_seed_and_reaches_the_fraction(tmp_path):
    drawn = {}
    for seed, run in ((0, "first"), (0, "again"), (1, "first"), (2, "first")):
        record = split_by_label(
            REAL_TEXT,
            tmp_path / f"private-{seed}-{run}",
            tmp_path / f"public-{seed}-{run}",
            "label_module",
            public_fraction=0.3,
            seed=seed,
        )
        assert record["public_fraction"] == 0.3 and record["seed"] == seed
        n_public, n_private = (sum(record["counts"][part].values()) for part in ("public", "private"))
        assert n_public / (n_public + n_private) >= 0.3
        assert record["private_labels"]
        drawn.setdefault(seed, []).append(record["public_labels"])
    assert drawn[0][0] == drawn[0][1]
    assert len({tuple(labels[0]) for labels in drawn.values()}) > 1  # the seed matters


def _source_missing(tmp_path):
    return {"source": tmp_path / "nowhere"}


def _test_csv_missing(tmp_path):
    (tmp_path / "source" / "test.csv").unlink()
    return {}


def _no_public_validation(tmp_path):
    (tmp_path / "source" / "val.csv").write_text(HEADER + "avocado,a,x\ncranberry,c,x\n", encoding="utf-8")
    return {}


def _private_into_source(tmp_path):
    return {"private_dir": tmp_path / "source"}


def _public_holds_csv(tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "train.csv").write_text("text\nmine\n", encoding="utf-8")
    return {}


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            dict(column="label_nope"),
            ValueError,
            r"no column `label_nope` \(columns: \['text', 'label_topic', "
            r"'label_tone'\]\); pass the label column .* label columns are named label\*",
        ),
        (
            dict(public_labels=["z", "a"]),
            ValueError,
            r"public label\(s\) \['z'\] do not occur in `label_topic` .*"
            r"known values: \['a', 'b', 'c'\]; name public labels among them",
        ),
        (
            dict(public_labels=["a", "b", "c"]),
            ValueError,
            r"public_labels name every value of `label_topic` .* no "
            r"label would be private; keep at least one label private",
        ),
        (dict(public_labels=[]), ValueError, r"public_labels is empty: no label of `label_topic` would be public"),
        (dict(public_labels=None), ValueError, r"give exactly one of public_labels .* and public_fraction"),
        (dict(public_fraction=0.5), ValueError, r"give exactly one of public_labels .* and public_fraction"),
        (dict(public_labels=None, public_fraction=1.5), ValueError, r"public_fraction=1.5 must lie strictly between"),
        (
            dict(public_labels=None, public_fraction=0.95),
            ValueError,
            r"public_fraction=0.95 with seed 0 took every "
            r"value of `label_topic`.* no label would be private",
        ),
        (
            _no_public_validation,
            ValueError,
            r"the public part's val.csv would have no rows: .*val.csv hold\(s\) no "
            r"document with a public label of `label_topic`; choose other public labels",
        ),
        (_private_into_source, ValueError, r"the private folder .*source is the source folder; write each part to"),
        (dict(public_dir="private"), ValueError, r"the private and public folders are both .*; give each part its own"),
        (
            _public_holds_csv,
            ValueError,
            r"the public folder .*public already holds \['train.csv'\]; the split never "
            r"overwrites: remove them or choose another folder",
        ),
        (_source_missing, FileNotFoundError, r"corpus folder .*nowhere does not exist"),
        (_test_csv_missing, FileNotFoundError, r"missing .*test.csv: a csv corpus needs train.csv"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, change, error, message):
    write_corpus(tmp_path / "source")
    arguments = {
        "source": tmp_path / "source",
        "private_dir": tmp_path / "private",
        "public_dir": tmp_path / "public",
        "column": "label_topic",
        "public_labels": ["b"],
    }
    given = change(tmp_path) if callable(change) else change
    arguments.update({k: tmp_path / v if k.endswith("_dir") else v for k, v in given.items()})
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(error, match=message):
        split_by_label(**arguments)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_a_write_that_fails_midway_leaves_no_part_behind(tmp_path, monkeypatch):
    source = write_corpus(tmp_path / "source")
    (tmp_path / "public").mkdir()  # an existing empty folder: its files are moved in one by one

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(label_split.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        split_by_label(source, tmp_path / "private", tmp_path / "public", "label_topic", public_labels=["b"])
    assert not (tmp_path / "private").exists()  # moved into place first, removed again
    assert not list((tmp_path / "public").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public", "source"]


def test_check_disjoint_passes_on_a_split_and_names_a_label_on_both_sides(tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    split_by_label(write_corpus(tmp_path / "source"), private, public, "label_topic", public_labels=["b"])
    assert check_disjoint(private, public) is None

    with open(public / "train.csv", "a", encoding="utf-8") as f:
        f.write("a stray apple,a,x\n")
    with pytest.raises(ValueError) as raised:
        check_disjoint(private, public)
    message = str(raised.value)
    for words in (str(private), str(public), "`label_topic`", "'a'", "re-run", f"remove {SPLIT_RECORD}"):
        assert words in message

    for folder in (private, public):  # without a record nothing is claimed, so nothing is checked
        (folder / SPLIT_RECORD).unlink()
    assert check_disjoint(private, public) is None


def test_check_disjoint_refuses_a_public_csv_without_the_label_column(tmp_path):
    private, public = tmp_path / "private", tmp_path / "public"
    split_by_label(write_corpus(tmp_path / "source"), private, public, "label_topic", public_labels=["b"])
    (public / "val.csv").write_text("text\nno labels here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"val.csv has no column `label_topic` \(columns: \['text'\]\)"):
        check_disjoint(private, public)


def test_read_split_record_refuses_a_broken_record(tmp_path):
    (tmp_path / SPLIT_RECORD).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"split.json is not a JSON record .* or remove it"):
        read_split_record(tmp_path)


def test_the_command_line_splits_and_reports(tmp_path, capsys):
    source = write_corpus(tmp_path / "source")
    argv = [str(source), "--column", "label_topic", "--private", str(tmp_path / "p"), "--public", str(tmp_path / "q")]
    assert main([*argv, "--public-labels", "b, c"]) == 0
    assert "private (a)" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / SPLIT_RECORD).read_text())["public_labels"] == ["b", "c"]

    assert main([*argv, "--public-fraction", "0.3", "--seed", "1"]) == 2  # the folders are taken now
    assert "never overwrites" in capsys.readouterr().err


def test_the_real_text_fixture_loads_as_a_csv_corpus():
    corpus = load_corpus(f"csv:{REAL_TEXT}", code_names={"label_module": "Module", "label_kind": "Kind"})
    assert corpus.code_columns == {"label_module": "Module", "label_kind": "Kind"}
    assert sum(len(corpus.texts(split)) for split in corpus.splits) >= 800
    assert any(len(text) > 600 for text in corpus.texts("train"))
    modules = {split: {c["Module"] for c in corpus.codes(split)} for split in corpus.splits}
    assert len(modules["train"]) >= 12 and modules["validation"] == modules["test"] == modules["train"]
    assert {c["Kind"] for c in corpus.codes("train")} == {"class", "function"}
