"""The one prompts-file reader shared by `diagnose-dataset` folders and the RichHF reader."""

from __future__ import annotations

import pytest

from imagedoctor.core.data.prompts_file import read_prompts_file

NAMES = ("image", "filename")


@pytest.mark.parametrize("suffix,text", [
    (".json", '{"a.png": "a cat", "b.png": "two dogs"}'),
    (".jsonl", '{"image": "a.png", "prompt": "a cat"}\n\n{"filename": "b.png", "caption": "two dogs"}\n'),
    (".csv", 'filename,caption\na.png,a cat\nb.png,two dogs\n'),
    (".tsv", "a.png\ta cat\nb.png\ttwo dogs\n"),
])
def test_every_format_reads_the_same_table(tmp_path, suffix, text):
    path = tmp_path / f"prompts{suffix}"
    path.write_text(text)
    assert read_prompts_file(path, NAMES, ("prompt", "caption")) == {"a.png": "a cat", "b.png": "two dogs"}


def test_errors_name_the_file_line_and_what_was_expected(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"image": "a.png", "prompt": "x"}\n{"image": "b.png"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: need an image name .* a prompt .*; expected FORMAT"):
        read_prompts_file(bad, NAMES, expected="FORMAT")
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:1: not valid JSON"):
        read_prompts_file(bad, NAMES)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("a.png a cat\n")
    with pytest.raises(ValueError, match=r"p\.tsv:1: expected 'image name<TAB>prompt'"):
        read_prompts_file(tsv, NAMES)
    csv_ = tmp_path / "p.csv"
    csv_.write_text("name,text\na.png,x\n")
    with pytest.raises(ValueError, match=r"header needs an image column .* it has \['name', 'text'\]"):
        read_prompts_file(csv_, NAMES)
    js = tmp_path / "p.json"
    js.write_text('["a.png"]')
    with pytest.raises(ValueError, match="must be an object"):
        read_prompts_file(js, NAMES)
    with pytest.raises(FileNotFoundError, match="it should be FORMAT"):
        read_prompts_file(tmp_path / "missing.jsonl", NAMES, expected="FORMAT")
