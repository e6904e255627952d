"""The frozen public text: the built-in corpus must not change with the Python version."""
import platform

import pytest

from distildp import data, public_text
from distildp.source import ReviewSource


def test_frozen_tables_are_what_pydoc_gives_on_the_python_that_froze_them():
    frozen = public_text.frozen()
    if platform.python_version() != frozen["python"]:
        pytest.skip(f"frozen from Python {frozen['python']}; this is {platform.python_version()}, whose "
                    "pydoc_data may differ (which is why the tables are frozen)")
    live = public_text.read_pydoc()
    assert live == frozen
    assert list(live["general"]) == list(frozen["general"])  # order matters to the source


def test_public_corpus_and_source_come_from_the_frozen_tables():
    frozen = public_text.frozen()
    assert data.pydoc_paragraphs() == frozen["paragraphs"] and len(frozen["paragraphs"]) > 500
    # the source's words are the frozen vocabulary (its golden identity: test_machine_independence.py)
    assert set(frozen["general"]) <= set(ReviewSource(0).tokens)
