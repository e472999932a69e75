"""The program in docs/quickstart.md runs as written and prints what it did."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from personal.model.base import bundled_models

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1, "the quickstart has exactly one Python example"
    return blocks[0]


def test_the_example_is_short():
    lines = [line for line in _example().splitlines() if line.strip()]
    assert len(lines) < 40


@pytest.mark.skipif("base-v1" not in bundled_models(), reason="bundled models not built")
def test_the_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(_example(), str(DOC), "exec")
    for _ in range(2):  # the second run reopens the same encrypted store
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {"__name__": "__main__"})
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("remind me to call Ana at 6 -> ")
        assert lines[1].startswith("text Ana I'm running late -> ")
        assert lines[2].startswith(("trained:", "no round due yet"))
    assert (tmp_path / "assistant-store").is_dir()
