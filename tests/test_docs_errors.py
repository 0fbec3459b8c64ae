"""The error messages docs/cli.md quotes are the ones the commands print: each quoted command is run on files
made as its name says (a text file, an empty or cut-off JPEG, a 10-pixel icon, a folder of photos, a missing
checkpoint) and its one line of stderr is compared with the quoted line, character for character."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from efficientvim.cli import main

DOC = Path(__file__).parents[1] / "docs" / "cli.md"


def quoted_errors() -> list[tuple[str, str]]:
    """(command, its error line) for every ``$ efficientvim ...`` of the doc's console blocks that shows an error."""
    pairs = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ efficientvim ") and i + 1 < len(lines) and ": error: " in lines[i + 1]:
                pairs.append((line[2:], lines[i + 1]))
    return pairs


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("a shopping list, not a picture\n")
    Path("empty.jpg").write_bytes(b"")
    Image.effect_noise((64, 48), 60).convert("RGB").save("whole.jpg", quality=90)
    whole = Path("whole.jpg").read_bytes()
    assert len(whole) > 1200
    Path("truncated.jpg").write_bytes(whole[:1000])  # a download cut off after 1000 bytes
    Image.new("RGB", (10, 10), "red").save("icon.png")
    Path("photos").mkdir()
    Image.new("RGB", (320, 240), (20, 90, 200)).save("photos/lake.jpg")
    return tmp_path


def test_the_doc_quotes_error_messages():
    commands = [c for c, _ in quoted_errors()]
    assert len(commands) >= 6 and any("empty.jpg" in c for c in commands)


@pytest.mark.parametrize("command, expected", quoted_errors(), ids=[c for c, _ in quoted_errors()])
def test_each_quoted_error_is_what_the_command_prints(command, expected, user_files, capsys):
    assert main(shlex.split(command)[1:]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [expected]
