"""A store that has been through one training round (records, ledger, anchor, adapter, EWC
state, replay buffer, settings), built once per test module and copied per test."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from personal.cli import cli
from personal.store import InteractionLog, Passphrase, ScryptParams
from personal.store import keys as keys_module

import pytest
from click.testing import CliRunner, Result
from test_train_audit_cli import PASS, POLICY

__all__ = ["PASS", "POLICY", "build", "copy", "flip", "rows", "run"]


def run(*args: object, **kwargs: object) -> Result:
    """``personal ARGS`` with the test passphrase; exceptions become the result's."""
    env = {"PERSONAL_PASSPHRASE": PASS, **kwargs.pop("env", {})}  # type: ignore[dict-item]
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, **kwargs)  # type: ignore[arg-type]


def build(dest: Path, base: str, *, records: int = 10) -> Path:
    """Create a store (cheap scrypt) with ``records`` interactions and train one round."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))
        with InteractionLog.create(dest / "store", Passphrase(PASS), synchronous="NORMAL") as log:
            for i in range(records):
                log.append(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} minutes late.")
    (dest / "policy.toml").write_text(POLICY)
    trained = run("train", dest / "store", "--base", base, "--policy", dest / "policy.toml")
    assert trained.exit_code == 0, trained.output
    return dest / "store"


def copy(store: Path, dest: Path) -> Path:
    """A fresh copy of a built store (so every test may damage its own)."""
    shutil.copytree(store, dest / "store")
    return dest / "store"


def flip(store: Path, table: str, where: str, column: str = "sealed") -> None:
    """Flip the last bit of one sealed blob, as a bit rot or a careless edit would."""
    conn = sqlite3.connect(store / "store.db")
    (blob,) = conn.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()
    damaged = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", [damaged])
    conn.commit()
    conn.close()


def rows(store: Path, table: str) -> list[tuple]:
    """Every row of ``table`` (to prove a command left it alone)."""
    conn = sqlite3.connect(store / "store.db")
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()
