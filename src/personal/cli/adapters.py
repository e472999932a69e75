"""``personal adapters list|activate|rollback|deactivate|verify|prune``: a store's adapters.

No key is needed: adapters are outputs of DP training and are stored unencrypted in
``STORE/adapters`` (docs/adapters.md says why that fits the privacy model). Activating here
moves the pointer only; a running app hot-swaps the new version when it next loads the active
one. Errors the library raises on purpose print ``error: ...`` and exit with status 2;
``verify`` exits 1 when it finds damage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from personal.cli.common import store_argument

import click

if TYPE_CHECKING:  # personal.adapters imports mlx: only when a command runs
    from personal.adapters import AdapterRegistry, Manifest

_json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_base_opt = click.option(
    "--base",
    help="Refuse a version not trained on this base (a model directory or bundled name).",
)


def _registry(store: Path) -> AdapterRegistry:
    from personal.adapters import AdapterRegistry

    return AdapterRegistry.for_store(store)


def _fingerprint(base: str | None) -> str | None:
    if base is None:
        return None
    from personal.model.base import resolve_model_path
    from personal.model.fingerprint import fingerprint_directory

    return fingerprint_directory(resolve_model_path(base)[0])


def _describe(manifest: Manifest) -> str:
    return (
        f"version {manifest.version} (base {manifest.base_name}, "
        f"{manifest.base_fingerprint[:19]}…, created {manifest.created})"
    )


@click.group("adapters")
def adapters_group() -> None:
    """Versioned LoRA adapters of a store: list, activate, roll back, verify, prune."""


@adapters_group.command("list")
@store_argument
@_json_flag
def list_command(store: Path, as_json: bool) -> None:
    """List every version of STORE's adapters, oldest first (* marks the active one)."""
    rows = _registry(store).list()
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    if not rows:
        click.echo("no adapters")
        return
    click.echo(f"  {'version':>7}  {'created':<27}  {'base':<24}  sha256")
    for row in rows:
        mark = "*" if row.active else " "
        if row.manifest is None:
            click.echo(f"{mark} {row.version:>7}  unreadable: {row.problem}")
            continue
        m = row.manifest
        base = f"{m.base_name} {m.base_fingerprint.removeprefix('sha256:')[:8]}"
        click.echo(f"{mark} {row.version:>7}  {m.created:<27}  {base:<24}  {m.weights_sha256[:16]}")


@adapters_group.command("activate")
@store_argument
@click.argument("version", type=click.IntRange(min=1))
@_base_opt
def activate_command(store: Path, version: int, base: str | None) -> None:
    """Make VERSION the active adapter of STORE (hash-verified; the old one stays for rollback)."""
    manifest = _registry(store).activate(version, base_fingerprint=_fingerprint(base))
    click.echo(f"activated {_describe(manifest)}")


@adapters_group.command("rollback")
@store_argument
@click.option("--to", "to", type=click.IntRange(min=1), help="Roll back to this version.")
@_base_opt
def rollback_command(store: Path, to: int | None, base: str | None) -> None:
    """Re-activate the version that was active before the current one (or --to VERSION)."""
    manifest = _registry(store).rollback(to, base_fingerprint=_fingerprint(base))
    click.echo(f"rolled back to {_describe(manifest)}")


@adapters_group.command("deactivate")
@store_argument
def deactivate_command(store: Path) -> None:
    """Serve no adapter (the base alone) from now on; the next train starts a fresh adapter
    (after a change of training.lora, say). `personal adapters rollback STORE` undoes it."""
    registry = _registry(store)
    active = registry.pointer().active
    registry.deactivate()
    if active is None:
        click.echo("no adapter was active")
    else:
        click.echo(f"deactivated version {active}; `personal adapters rollback` re-activates it")


@adapters_group.command("verify")
@store_argument
@_json_flag
def verify_command(store: Path, as_json: bool) -> None:
    """Check every version's SHA-256 and manifest and the active pointer; exit 1 on damage."""
    report = _registry(store).verify()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"verified {len(report.verified)} version(s); active: {report.active or '-'}")
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        if report.leftovers:
            click.echo(f"{len(report.leftovers)} leftover(s) of interrupted writes (harmless)")
        click.echo("ok" if report.ok else "FAILED")
    click.get_current_context().exit(0 if report.ok else 1)


@adapters_group.command("prune")
@store_argument
@click.option("--keep", type=click.IntRange(min=1), required=True, help="Newest versions to keep.")
@_json_flag
def prune_command(store: Path, keep: int, as_json: bool) -> None:
    """Delete all but the KEEP newest versions (never the active one or its rollback target)."""
    removed = _registry(store).prune(keep)
    if as_json:
        click.echo(json.dumps({"removed": removed}))
    elif removed:
        click.echo(f"removed version(s) {', '.join(map(str, removed))}")
    else:
        click.echo("nothing to remove")


def register(group: click.Group) -> None:
    """Add ``personal adapters ...`` to the ``personal`` group."""
    group.add_command(adapters_group)
