"""`workbench demo-model PATH` never deletes or writes into a folder that is not its own."""

from __future__ import annotations

import pytest

from models.demo import DemoFolderTaken, build_demo, build_model, quantize
from workbench.cli import main


def _user_folder(tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


def _one_line_refusal(capsys, path) -> None:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("workbench: ") and str(path) in lines[0]


def test_a_folder_of_other_files_is_refused_and_untouched(tmp_path, capsys):
    folder = _user_folder(tmp_path)
    assert main(["demo-model", str(folder)]) == 1
    _one_line_refusal(capsys, folder)
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-")]


def test_a_file_and_a_symlink_are_refused(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("keep")
    assert main(["demo-model", str(file)]) == 1
    _one_line_refusal(capsys, file)
    assert file.read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(_user_folder(tmp_path))
    assert main(["demo-model", str(link)]) == 1
    _one_line_refusal(capsys, link)
    assert (tmp_path / "precious" / "thesis.txt").exists()


def test_sized_model_and_its_quantized_twin_refuse_other_folders(tmp_path, capsys):
    folder = _user_folder(tmp_path)
    assert main(["demo-model", str(folder), "--size", "0.5b"]) == 1
    _one_line_refusal(capsys, folder)
    twin = tmp_path / "new-4bit"
    twin.mkdir()
    (twin / "mine.txt").write_text("x")
    assert main(["demo-model", str(tmp_path / "new"), "--size", "0.5b", "--bits", "4"]) == 1
    _one_line_refusal(capsys, twin)
    assert not (tmp_path / "new").exists() and (twin / "mine.txt").exists()


def test_library_calls_refuse_too(tmp_path):
    folder = _user_folder(tmp_path)
    for call in (lambda: build_demo(folder), lambda: build_model(folder),
                 lambda: quantize(tmp_path / "src", folder)):
        with pytest.raises(DemoFolderTaken):
            call()
    assert (folder / "thesis.txt").exists()


def test_empty_folder_and_an_earlier_kit_are_built_into(tmp_path, capsys):
    empty = tmp_path / "demo"
    empty.mkdir()
    assert main(["demo-model", str(empty)]) == 0
    assert capsys.readouterr().out.strip() == str(empty)
    assert (empty / "DEMO_STAMP").is_file() and (empty / "llama" / "config.json").is_file()
    (empty / "llama" / "stale.txt").write_text("from the old kit")
    assert main(["demo-model", str(empty)]) == 0  # an earlier kit is replaced
    assert not (empty / "llama" / "stale.txt").exists()
