"""Cleaning: headings, empty and too-short documents, with the reason for each drop."""

from data_prep.cleaning import EMPTY, HEADINGS_ONLY, TOO_SHORT, CleaningConfig, clean_document
from data_prep.splitting import split_sentences

CONFIG = CleaningConfig(min_line_words=5, min_doc_words=12)
PARAGRAPH = "Anarchism is a political philosophy that advocates self-governed societies based on voluntary institutions."


def test_headings_and_blank_lines_are_dropped_and_whitespace_collapsed():
    lines = ["Early life.", "", "  " + PARAGRAPH.replace(" ", "  \t"), "See also.", "Relations with other movements."]
    assert clean_document(lines, CONFIG) == ([PARAGRAPH], None)


def test_whole_documents_are_dropped_with_their_reason():
    assert clean_document(["", "   ", "\t"], CONFIG) == ([], EMPTY)
    assert clean_document(["History.", "Early life and career.", ""], CONFIG) == ([], HEADINGS_ONLY)
    assert clean_document(["This line has exactly six words."], CONFIG) == ([], TOO_SHORT)


def test_min_line_words_one_keeps_every_non_empty_line():
    assert clean_document(["Yes.", PARAGRAPH], CleaningConfig(min_line_words=1, min_doc_words=1)) == (
        ["Yes.", PARAGRAPH], None)


def test_each_paragraph_ends_a_sentence():
    # blingfire would join "without end" to the next line if given both at once.
    assert split_sentences(["Dr. Smith arrived. He sat down", "The next paragraph starts here."]) == [
        "Dr. Smith arrived.", "He sat down", "The next paragraph starts here."]
