"""What every store command shares: the ``STORE`` argument, ``--key-file``, the passphrase.

The key is a passphrase, taken from ``--key-file FILE`` (its content, trailing newline
stripped), else the ``PERSONAL_PASSPHRASE`` environment variable, else a hidden prompt (or, with
no terminal, a line piped on stdin). The new passphrase of ``rotate-keys`` comes from
``--new-key-file``, ``PERSONAL_NEW_PASSPHRASE`` or a prompt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from personal.store import InteractionLog, Passphrase, Store

import click

ENV_KEY = "PERSONAL_PASSPHRASE"
ENV_NEW_KEY = "PERSONAL_NEW_PASSPHRASE"

#: The ``STORE`` argument of every command that works on a store.
store_argument = click.argument("store", type=click.Path(file_okay=False, path_type=Path))
#: ``--key-file FILE``: where the passphrase comes from (else the environment, else a prompt).
key_file_option = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"File holding the passphrase (default: ${ENV_KEY}, else a prompt).",
)


def passphrase(key_file: Path | None, env: str, prompt: str, *, confirm: bool) -> Passphrase:
    """The passphrase from a key file, the environment, or a hidden prompt (in that order)."""
    if key_file is not None:
        return Passphrase.from_file(key_file)
    value = os.environ.get(env)
    if value:
        return Passphrase(value)
    if sys.stdin.isatty():
        return Passphrase(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm))
    # Not a terminal: no prompt (it could not hide the input); read the passphrase piped in.
    option = "--new-key-file" if env == ENV_NEW_KEY else "--key-file"
    how = (
        f"Set ${env}, pass {option} FILE (a file holding only the passphrase), or pipe it on "
        "stdin" + (" twice, one line each (it is confirmed)" if confirm else "")
    )
    first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise click.UsageError(f"no passphrase: stdin is not a terminal and gave none. {how}")
    if confirm and sys.stdin.readline().rstrip("\r\n") != first:
        raise click.UsageError(f"the two passphrases piped on stdin differ. {how}")
    return Passphrase(first)


def open_log(store: Path, key_file: Path | None) -> InteractionLog:
    """Open ``store``'s interaction log with the passphrase :func:`passphrase` finds."""
    return InteractionLog.open(store, passphrase(key_file, ENV_KEY, "Passphrase", confirm=False))


def store_base(store: Path, key: Any) -> str:
    """The base model the store records (its adapters are on it); a usage error naming
    ``--base`` when it records none (never trained)."""
    from personal.store.settings import StoreSettings

    with Store.open(store, key) as opened:
        recorded = StoreSettings(opened).get("base")
    if not recorded or not recorded.get("source"):
        raise click.UsageError(
            "the store records no base model yet (it was never trained): pass --base NAME_OR_DIR"
        )
    return str(recorded["source"])


__all__ = [
    "ENV_KEY",
    "ENV_NEW_KEY",
    "key_file_option",
    "open_log",
    "passphrase",
    "store_argument",
    "store_base",
]
