"""The code in docs/quickstart.md runs as written (under 30 lines)."""

from __future__ import annotations

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
    assert len(lines) < 30


@pytest.mark.skipif("base-v1" not in bundled_models(), reason="bundled models not built")
def test_the_example_runs(tmp_path):
    namespace: dict = {}
    exec(compile(_example(), str(DOC), "exec"), namespace)
    reply = namespace["assistant_turn"](str(tmp_path / "store"), "a passphrase", "call Ana")
    assert isinstance(reply, str)
    # A second session reopens the same encrypted store with the same passphrase.
    again = namespace["assistant_turn"](str(tmp_path / "store"), "a passphrase", "text Ana")
    assert isinstance(again, str)
