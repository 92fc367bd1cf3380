"""asr.metadata.read_metadata: the one reader of LJSpeech-style ``id|raw|normalized`` files."""
import pytest

from asr.metadata import MetadataRow, read_metadata


def test_rows_two_column_fallback_bare_quotes_blank_lines(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text('LJ001-0001|Printing, in 1840|Printing, in eighteen forty\n'
                    '\n'
                    'LJ001-0002|He said "no|He said "no\n'
                    'LJ001-0003|only raw text\n'
                    'LJ001-0004|raw again|\n', encoding="utf-8")
    assert read_metadata(path) == [
        MetadataRow("LJ001-0001", "Printing, in 1840", "Printing, in eighteen forty"),
        MetadataRow("LJ001-0002", 'He said "no', 'He said "no'),  # no quoting: the quote is text
        MetadataRow("LJ001-0003", "only raw text", "only raw text"),
        MetadataRow("LJ001-0004", "raw again", "raw again"),
    ]


def test_a_row_without_text_is_skipped_or_refused_naming_the_line(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("a|one|one\nbroken line\nb|two|two\n", encoding="utf-8")
    assert [r.id for r in read_metadata(path)] == ["a", "b"]
    with pytest.raises(ValueError, match=r"texts\.csv:2: expected 'id\|raw text\|normalized text'"):
        read_metadata(path, strict=True)
