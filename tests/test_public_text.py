"""The frozen public text: the built-in corpus must not change with the Python version."""

import platform

from distildp.data import loaders, public_text
from distildp.data.source import ReviewSource


def test_frozen_tables_keep_read_pydocs_rules_and_are_what_it_reads_on_their_python():
    """On every Python: the frozen tables keep the rules read_pydoc builds them by (the source relies on bigrams
    within the vocabulary). On the Python that froze them they are exactly what it reads (pydoc_data differs
    between versions, which is why the tables are frozen)."""
    frozen = public_text.frozen()
    general, bigrams = frozen["general"], frozen["bigrams"]
    assert len(general) > 1000 and all(n >= 2 for n in general.values())
    assert all(len(w) > 1 or w in ("a", "i") for w in general)
    assert all(a in general and 0 < len(nexts) <= 24 and set(nexts) <= set(general) for a, nexts in bigrams.items())
    assert all(len(p.split()) >= 8 for p in frozen["paragraphs"])
    if platform.python_version() == frozen["python"]:
        live = public_text.read_pydoc()
        assert live == frozen
        assert list(live["general"]) == list(frozen["general"])  # order matters to the source


def test_public_corpus_and_source_come_from_the_frozen_tables():
    frozen = public_text.frozen()
    assert loaders.pydoc_paragraphs() == frozen["paragraphs"] and len(frozen["paragraphs"]) > 500
    # the source's words are the frozen vocabulary (its golden identity: test_machine_independence.py)
    assert set(frozen["general"]) <= set(ReviewSource(0).tokens)
