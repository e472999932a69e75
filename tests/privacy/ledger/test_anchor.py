"""The ledger anchor's file: a write cut between its temporary file and the rename.

``FileAnchor.write`` is :func:`personal.filesafety.atomic_write_bytes`. Whether the writer
dies there (SIGKILL, in a real process) or an exception stops it, the previous anchor must stay
intact, byte for byte, and the ledger must open and verify: the database is then one entry
ahead of the anchor, which is the accepted (and repaired) crash case.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from personal.filesafety import leftover_temps
from personal.privacy.ledger import Ledger
from personal.privacy.ledger import anchor as anchor_module
from personal.store import RawKey, Store

import pytest
from test_ledger import CHEAP, CONTEXT, DELTA, EPS

KEY = bytes(range(32))

# Opens the store, then dies (SIGKILL) when the anchor's temporary file is written and fsynced
# but not yet renamed over the anchor: in the middle of the next round's anchor write.
CHILD = textwrap.dedent(
    f"""
    import os, signal, sys
    import personal
    from personal.privacy.filter import Charge
    from personal.privacy.ledger import Ledger
    from personal.store import RawKey, Store

    store = Store.open(sys.argv[1], RawKey({KEY!r}))
    ledger = Ledger.open(store, epsilon={EPS!r}, delta={DELTA!r})
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "ledger.anchor":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace
    print("begin", flush=True)
    ledger.begin_round({CHEAP!r}, ["a"], **{CONTEXT!r})
    print("survived", flush=True)
    """
)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A store whose ledger has one completed round (so an anchor exists)."""
    path = tmp_path / "store"
    with Store.create(path, RawKey(KEY)) as store:
        ledger = Ledger.open(store, epsilon=EPS, delta=DELTA)
        round_id = ledger.begin_round(CHEAP, ["a", "b"], **CONTEXT)
        ledger.finish_round(round_id, "completed", {"completed_steps": CHEAP.steps})
    return path


def _check_reopens_one_ahead(path: Path, before: bytes) -> None:
    anchor = path / anchor_module.ANCHOR_NAME
    with Store.open(path, RawKey(KEY)) as store:
        old_head = anchor_module.open_head(store, before)
        ledger = Ledger.open(store, epsilon=EPS, delta=DELTA)
        assert ledger.head.seq == old_head.seq + 1  # the round's charge was committed
        report = ledger.verify()
        assert report.ok, report.problems
        assert report.anchor == report.head == ledger.head  # the lag of one was repaired
        assert ledger.rounds()[-1].status == "charged"
        assert anchor.read_bytes() != before


def test_a_writer_killed_before_the_rename_leaves_the_previous_anchor(store_path: Path) -> None:
    anchor = store_path / anchor_module.ANCHOR_NAME
    before = anchor.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(store_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "begin\n"  # killed inside begin_round, at the anchor's rename
    assert anchor.read_bytes() == before  # intact, byte for byte
    (tmp,) = leftover_temps(anchor)  # the complete new anchor, never renamed
    with Store.open(store_path, RawKey(KEY)) as store:
        written = anchor_module.open_head(store, tmp.read_bytes())
        assert written.seq == anchor_module.open_head(store, before).seq + 1
    _check_reopens_one_ahead(store_path, before)


def test_an_exception_before_the_rename_leaves_the_previous_anchor(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor = store_path / anchor_module.ANCHOR_NAME
    before = anchor.read_bytes()
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if os.path.basename(dst) == anchor_module.ANCHOR_NAME:
            raise KeyboardInterrupt  # after the temporary file was written and fsynced
        real_replace(src, dst)

    with Store.open(store_path, RawKey(KEY)) as store:
        ledger = Ledger.open(store, epsilon=EPS, delta=DELTA)
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            ledger.begin_round(CHEAP, ["a"], **CONTEXT)
        monkeypatch.undo()
    assert anchor.read_bytes() == before
    assert leftover_temps(anchor) == []  # removed on the way out
    _check_reopens_one_ahead(store_path, before)


def test_the_anchor_is_flushed_with_f_fullfsync_where_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As durable as the adapter pointer on macOS (it was a plain fsync before)."""
    calls: list[int] = []
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, command, *args: calls.append(command))
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a plain fsync"))
    anchor_module.FileAnchor(tmp_path / "ledger.anchor").write(b"sealed head")
    assert calls == [51, 51]  # the file, then its directory
    assert (tmp_path / "ledger.anchor").read_bytes() == b"sealed head"
