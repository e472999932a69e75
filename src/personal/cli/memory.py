"""``personal memory rebuild|stats|drop``: the store's personal-memory index.

The index (:mod:`personal.store.memory`) is derived from the records: ``rebuild`` makes it
again from them (after ``verify`` reports it damaged, or to start keeping one), ``stats`` says
what it holds, ``drop`` deletes it. ``personal generate --memory`` uses it.
"""

from __future__ import annotations

import json
from pathlib import Path

from personal.cli.common import key_file_option, open_log, store_argument

import click


@click.group("memory")
def memory_group() -> None:
    """Personal memory: the sealed index of past interactions `generate --memory` recalls."""


@memory_group.command("rebuild")
@store_argument
@key_file_option
def rebuild_command(store: Path, key_file: Path | None) -> None:
    """Rebuild STORE's memory index from its records (creates it if the store keeps none).
    One transaction: a crash leaves the old index. Records are never written."""
    from personal.store import memory

    with open_log(store, key_file) as log:
        report = memory.rebuild(log)
    click.echo(f"rebuilt the memory index of {store}: {report.entries} entries")
    if report.skipped:
        click.echo(
            f"warning: {len(report.skipped)} record(s) could not be opened and are not in the "
            "index: run `personal verify`",
            err=True,
        )


@memory_group.command("stats")
@store_argument
@key_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(store: Path, key_file: Path | None, as_json: bool) -> None:
    """Show what STORE's memory index holds: entries, terms and its size against the log's
    (decrypts the index; nothing is written)."""
    from personal.memory import Memory

    with open_log(store, key_file) as log:
        stats = Memory(log).stats()
    if as_json:
        click.echo(json.dumps(stats.to_json(), indent=2))
        return
    if not stats.enabled:
        click.echo(
            f"memory index  none ({stats.records} records; `personal memory rebuild` builds one)"
        )
        return
    click.echo(f"memory index  {stats.entries} entries for {stats.records} records")
    click.echo(f"terms         {stats.terms} distinct, {stats.postings} postings")
    click.echo(
        f"size          {stats.index_bytes} bytes ({stats.index_bytes_ratio:.2f}x the log's "
        f"{stats.log_bytes})"
    )


@memory_group.command("drop")
@store_argument
@key_file_option
def drop_command(store: Path, key_file: Path | None) -> None:
    """Delete STORE's memory index (secure delete; the records stay). `generate --memory` or
    `memory rebuild` builds it again."""
    from personal.store import memory

    with open_log(store, key_file) as log:
        dropped = memory.drop(log)
    click.echo(f"dropped the memory index of {store} ({dropped} entries)")


def register(group: click.Group) -> None:
    """Add the ``memory`` group to the ``personal`` group."""
    group.add_command(memory_group)
