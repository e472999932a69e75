"""`personal audit --canaries`: the README command works, and no copy of the store outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from personal.cli import cli
from personal.store import InteractionLog, Passphrase, ScryptParams, Store, workdir

import pytest
from click.testing import CliRunner

PASS = "correct horse battery staple"
POLICY = """
name = "canary-cli"
[privacy]
unit = "day"
lifetime_epsilon = 4.0
delta = 1e-6
noise_multiplier = 12.0
[training]
min_new_units = 1
steps = 24
expected_batch_size = 4096.0
learning_rate = 0.02
max_tokens = 24
[training.lora]
rank = 2
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONAL_PASSPHRASE", PASS)
    (tmp_path / "policy.toml").write_text(POLICY)
    path = tmp_path / "store"
    cheap = ScryptParams(log_n=4, r=1, p=1)  # recorded in the store: every open is cheap
    with InteractionLog.create(path, Passphrase(PASS, cheap), synchronous="NORMAL") as log:
        log.unit_by = "day"
        for i in range(6):
            log.append(f"set an alarm for {i}", f"Alarm set for {i}.")
    return path


def test_the_readme_command_reports_the_canary_audit(store, tiny_model_factory, tmp_path):
    base = str(tiny_model_factory("llama"))
    html = tmp_path / "audit.html"
    args = ["audit", str(store), "--canaries", "16", "--base", base, "--json", "--html", str(html),
            "--policy", str(tmp_path / "policy.toml")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    data = json.loads(result.output)
    canary = data["canary_audit"]
    assert canary["canaries"] == 16 and data["ok"] == (canary["passed"] and data["ledger_ok"])
    assert "canary audit" in html.read_text()
    assert not [p for p in store.iterdir() if workdir.is_scratch(p.name)]


def test_a_killed_canary_audit_leaves_no_copy_outside_the_store(
    store, tiny_model_factory, tmp_path
):
    base = str(tiny_model_factory("llama"))
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch_tmp), "PERSONAL_PASSPHRASE": PASS}
    child = subprocess.Popen(
        [sys.executable, "-c", "from personal.cli import main; main()", "audit", str(store),
         "--canaries", "400", "--base", base, "--policy", str(tmp_path / "policy.toml")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        copied = []
        while time.monotonic() < deadline and child.poll() is None and not copied:
            copied = list(store.glob(".work-*/store/store.db"))
            time.sleep(0.05)
        assert copied, "the audit never made its copy"
        time.sleep(0.5)  # inside the canary round
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert list(scratch_tmp.iterdir()) == []  # nothing in the temporary directory
    left = [p for p in store.iterdir() if workdir.is_scratch(p.name)]
    assert left, "the kill came after the copy was removed; the test proves nothing"
    with Store.open(store, Passphrase(PASS)):
        pass  # the next open removes what the killed audit left
    assert not [p for p in store.iterdir() if p.name.startswith(".work-")]


def test_clean_spares_a_scratch_directory_in_use(tmp_path):
    with workdir.scratch(tmp_path) as live:
        (live / "copy").write_text("ciphertext")
        assert workdir.clean(tmp_path) == [] and live.exists()
    assert list(tmp_path.iterdir()) == []
    stale = tmp_path / ".work-dead"
    stale.mkdir()
    assert workdir.clean(tmp_path) == [stale] and not stale.exists()
