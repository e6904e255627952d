"""CSV corpora are read strictly: every malformed file is an error naming the file, the line and the fix."""

from pathlib import Path

import pytest

from distildp.data import csv_corpus, loaders
from distildp.data.loaders import load_corpus, load_public

FIXTURES = Path(__file__).parent / "fixtures"
GOOD = "text,label_stars\nhello there,1.0\n"


def corpus_dir(tmp_path: Path, train: str = GOOD, val: str = GOOD, test: str = GOOD) -> str:
    for name, content in (("train.csv", train), ("val.csv", val), ("test.csv", test)):
        (tmp_path / name).write_text(content)
    return f"csv:{tmp_path}"


@pytest.mark.parametrize(
    "files, message",
    [
        # the case: pandas read this as text 'extra', label 'cols'
        (
            dict(train="text,label_stars\nhello,1.0,extra,cols\n"),
            r"train.csv, line 2: 4 fields where the header \(line 1\) has 2; quote a field that contains a comma",
        ),
        (
            dict(val="text,label_stars\nfine,2.0\nno label here\n"),
            r"val.csv, line 3: 1 field where the header \(line 1\) has 2; add the missing fields",
        ),
        # line numbers are the editor's: a quoted line break and blank lines count
        (dict(test='text,label_stars\n"two\nlines",1.0\n\nbad,1.0,x\n'), r"test.csv, line 5: 3 fields"),
        (dict(test="text,label_stars\n"), r"test.csv has a header \(line 1\) but no rows: a split needs at least one"),
        (dict(val="\n\ntext,label_stars\n\n"), r"val.csv has a header \(line 3\) but no rows"),
        (
            dict(train="text,label_stars,label_stars\nhi,1.0,2.0\n"),
            r"train.csv, line 1: column name\(s\) \['label_stars'\] appear more than once in the header; give every",
        ),
        (
            dict(train='text,label_stars\nok,1.0\n"never closed,1.0\n'),
            r"cannot read .*train.csv as CSV: the record starting on line 3: .*every opening quote needs its closing",
        ),
        (dict(train='text,label_stars\n"quoted" then more,1.0\n'), r"train.csv as CSV: the record starting on line 2"),
        # a label that is a number in some splits and text in others
        (
            dict(test="text,label_stars\nok,2.0\nmeh,five\n"),
            r"test.csv, line 3: label `label_stars` is 'five' \(text\), but train.csv, val.csv hold\(s\) only numbers",
        ),
        (
            dict(train="text,label_stars\nok,5.0\nmeh,one\n", val="text,label_stars\nok,5\n"),
            r"train.csv, line 3: label `label_stars` is 'one' \(text\), but val.csv, test.csv",
        ),
        (dict(train="text,label_stars\nok,\n"), r"train.csv: column `label_stars` is empty .* \(file lines 2,"),
        (dict(train="text,label_stars\n\nok,1.0\n\n ,1.0\n"), r"column `text` is empty .* \(file lines 5,"),
    ],
)
def test_malformed_csv_corpus_is_refused_with_file_and_line(tmp_path, files, message):
    with pytest.raises(ValueError, match=message):
        load_corpus(corpus_dir(tmp_path, **files))


def test_well_formed_variants_still_load(tmp_path):
    long_text = "word " * 40_000  # 200 kB: beyond the csv module's default field limit
    corpus = load_corpus(
        corpus_dir(
            tmp_path,
            train=f'\ufefftext,label_stars,notes\n"a, quoted\nline",1.0,x\n\n"{long_text}",2.0,\n',
            test="text,label_stars,notes\nok,3,\n",
        )
    )
    assert corpus.texts("train") == ["a, quoted\nline", long_text]
    assert list(corpus.splits["train"].columns) == ["text", "label_stars"]  # BOM stripped, other columns dropped
    assert corpus.codes("test") == [{"Stars": "3"}]
    # text labels in every split are fine, as are labels that are numbers in every split
    text_labels = "text,label_kind\nok,good\n"
    corpus = load_corpus(corpus_dir(tmp_path, train=text_labels, val=text_labels, test=text_labels))
    assert corpus.codes("validation") == [{"Kind": "good"}]


def test_fixtures_still_load_and_count():
    corpus = load_corpus(f"csv:{FIXTURES / 'csv_corpus'}")
    assert {s: len(f) for s, f in corpus.splits.items()} == {"train": 3, "validation": 1, "test": 2}
    assert csv_corpus.count_csv_rows(FIXTURES / "csv_corpus" / "train.csv") == 3
    assert loaders.train_size(f"csv:{FIXTURES / 'csv_corpus'}") == 3
    assert loaders.train_size("yelp", {"data_dir": str(FIXTURES / "csv_corpus"), "n_train": 2}) == 2
    assert loaders.train_size("builtin", {"n_train": 123}) == 123
    assert loaders.train_size("builtin") == 4000  # the loader's default, read off its signature
    assert loaders.train_size("dbpedia_14") is None  # a hub dataset: unknown until downloaded
    assert len(load_public(f"csv:{FIXTURES / 'public_csv'}", text_column="body", n_val=1).train) == 7


def test_count_follows_the_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text\na\nb\n")
    assert csv_corpus.count_csv_rows(path) == 2
    path.write_text("text\na\nb\nc\n")
    assert csv_corpus.count_csv_rows(path) == 3
    path.write_text("text,label\na,1,2\n")
    with pytest.raises(ValueError, match="line 2: 3 fields"):
        csv_corpus.count_csv_rows(path)


def test_public_csv_is_read_as_strictly(tmp_path):
    (tmp_path / "train.csv").write_text("id,body\n0,fine text\n1,a, b\n")
    with pytest.raises(ValueError, match=r"train.csv, line 3: 3 fields where the header \(line 1\) has 2"):
        load_public(f"csv:{tmp_path}", text_column="body")
    (tmp_path / "train.csv").write_text("id,body\n0,fine text\n1,more text\n")
    (tmp_path / "val.csv").write_text("id,body\n")
    with pytest.raises(ValueError, match=r"val.csv has a header \(line 1\) but no rows"):
        load_public(f"csv:{tmp_path}", text_column="body")
