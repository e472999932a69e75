"""One writer process (the app) and one reader process (the trainer) at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from personal.store import InteractionLog, RawKey

KEY_HEX = "42" * 32

WRITER = """
import sys, time
from personal.store import Interaction, InteractionLog, RawKey
with InteractionLog.open(sys.argv[1], RawKey(bytes.fromhex(sys.argv[2]))) as log:
    for batch in range(100):
        log.append_many(
            Interaction(f"w{batch}:{j}", "response " * 50, unit=f"s{batch}") for j in range(30)
        )
        time.sleep(0.005)
    print("written", len(log))
"""

READER = """
import json, sys, time
from personal.store import InteractionLog, RawKey
seen, scans = set(), 0
with InteractionLog.open(sys.argv[1], RawKey(bytes.fromhex(sys.argv[2]))) as log:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = list(log.iter_records(page=200))  # raises if anything fails to decrypt
        assert all(r.prompt.startswith("w") and r.unit == "s" + r.prompt[1:].split(":")[0]
                   for r in records)
        seen.add(len(records))
        scans += 1
        if len(records) == 3000:
            break
print(json.dumps({"counts": sorted(seen), "scans": scans}))
"""


def test_a_writer_and_a_reader_process_run_together(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    InteractionLog.create(store_path, RawKey(bytes.fromhex(KEY_HEX))).close()
    args = [str(store_path), KEY_HEX]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    w_out, w_err = writer.communicate(timeout=120)
    r_out, r_err = reader.communicate(timeout=120)
    assert writer.returncode == 0, w_err.decode()
    assert reader.returncode == 0, r_err.decode()
    assert w_out.decode().split() == ["written", "3000"]
    result = json.loads(r_out)
    assert result["counts"][-1] == 3000
    assert len(result["counts"]) > 2  # the reader saw the log grow while it was written
    assert all(c % 30 == 0 for c in result["counts"])  # whole batches only
    with InteractionLog.open(store_path, RawKey(bytes.fromhex(KEY_HEX))) as log:
        assert log.verify().ok
