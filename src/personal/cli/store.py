"""``personal init|import|export|erase|rotate-keys|verify|repair|stats``: the store's commands.

The key is a passphrase, taken from ``--key-file FILE`` (its content, trailing newline
stripped), else the ``PERSONAL_PASSPHRASE`` environment variable, else a hidden prompt. The new
passphrase of ``rotate-keys`` comes from ``--new-key-file``, ``PERSONAL_NEW_PASSPHRASE`` or a
prompt. Errors the library raises on purpose print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personal.cli.common import (
    ENV_KEY,
    ENV_NEW_KEY,
    key_file_option,
    open_log,
    passphrase,
    store_argument,
)
from personal.errors import InvalidInteraction, StoreError
from personal.store import Interaction, InteractionLog
from personal.store.db import format_ts
from personal.store.records import UnitBy, check_unit, parse_time, prepare

import click

_IMPORT_FIELDS = {"unit", "prompt", "response", "ts", "feedback", "source", "metadata", "id"}


def _chat_pairs(messages: Any, where: str) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs of an mlx-lm / OpenAI chat: each user turn and the assistant
    turn that answers it. System turns are not stored (every exchange is rendered with the
    base's own chat format and default system prompt: docs/chat-format.md)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInteraction(f"{where}: messages must be a non-empty list")
    turns = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str)):
            raise InvalidInteraction(f"{where}: messages[{i}] needs a string content")
        if m.get("role") not in ("system", "user", "assistant"):
            raise InvalidInteraction(
                f"{where}: messages[{i}] has role {m.get('role')!r}; expected system, user or "
                "assistant"
            )
        if m["role"] != "system":
            turns.append((m["role"], m["content"]))
    pairs = []
    for i in range(0, len(turns), 2):
        chunk = turns[i : i + 2]
        if [r for r, _ in chunk] != ["user", "assistant"]:
            raise InvalidInteraction(
                f"{where}: messages must alternate user and assistant turns, each user turn "
                "answered (a trailing user turn has no response to learn)"
            )
        pairs.append((chunk[0][1], chunk[1][1]))
    return pairs


def _parse_line(line: str, where: str, unit_by: UnitBy = "interaction") -> list[Interaction]:
    """One JSONL line of ``personal import`` as interactions (units checked against the store's
    unit of privacy ``unit_by``).

    Accepted shapes: the store's own ``{"prompt", "response", ...}`` (``personal export``),
    mlx-lm's completions ``{"prompt", "completion"}`` and chat ``{"messages": [...]}`` (one
    interaction per answered user turn); ``ts``, ``unit``, ``feedback``, ``source`` and
    ``metadata`` may accompany any of them.
    """
    try:
        item: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInteraction(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise InvalidInteraction(f"{where}: expected a JSON object")
    unknown = sorted(set(item) - _IMPORT_FIELDS - {"completion", "messages"})
    if unknown:
        raise InvalidInteraction(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(_IMPORT_FIELDS - {'id'}))}, or prompt + completion, or messages"
        )
    shapes = [k for k in ("response", "completion", "messages") if k in item]
    if len(shapes) > 1:
        raise InvalidInteraction(f"{where}: give one of response, completion or messages")
    if "messages" in item:
        if "prompt" in item:
            raise InvalidInteraction(f"{where}: give messages or prompt, not both")
        pairs = _chat_pairs(item["messages"], where)
    else:
        answer = "completion" if "completion" in item else "response"
        missing = [k for k in ("prompt", answer) if not isinstance(item.get(k), str)]
        if missing:
            raise InvalidInteraction(
                f"{where}: {' and '.join(missing)} must be present as strings (or give messages)"
            )
        pairs = [(item["prompt"], item[answer])]
    extra: dict[str, Any] = {k: item[k] for k in ("unit", "feedback", "source") if k in item}
    if item.get("ts") is not None:
        extra["ts"] = parse_time(item["ts"], f"{where}: ts")
    if item.get("metadata") is not None:
        extra["metadata"] = item["metadata"]
    out = []
    for prompt, response in pairs:
        interaction = Interaction(prompt, response, **extra)
        try:  # validate now, to name the line
            prepared = prepare(interaction, 0, format_ts(datetime.now(UTC)), {})
            check_unit(unit_by, prepared.unit, prepared.ts, 0)
        except InvalidInteraction as exc:
            raise InvalidInteraction(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        out.append(interaction)
    return out


def _read_jsonl(
    stream: Iterable[str], name: str, unit_by: UnitBy = "interaction"
) -> Iterator[Interaction]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield from _parse_line(line, f"{name} line {number}", unit_by)


def _duplicates(log: InteractionLog, interactions: list[Interaction]) -> list[int]:
    """Indexes of ``interactions`` whose prompt and response are already in the store or
    earlier in the same import (decrypts the store's records; nothing is written)."""
    import hashlib

    def digest(prompt: str, response: str) -> bytes:
        return hashlib.sha256(json.dumps([prompt, response]).encode()).digest()

    seen = {digest(r.prompt, r.response) for r in log.iter_records()}
    found = []
    for i, it in enumerate(interactions):
        d = digest(it.prompt, it.response)
        if d in seen:
            found.append(i)
        seen.add(d)
    return found


def _report_bad(record_id: int, exc: StoreError) -> None:
    click.echo(f"warning: skipped {exc}", err=True)


def _cmd_init(store: Path, policy_name: str | None, key_file: Path | None) -> None:
    """Create a new encrypted store at STORE (--policy: record the policy it will train under,
    whose unit of privacy imports then follow)."""
    from personal.policy import load_policy
    from personal.store.settings import StoreSettings

    policy = load_policy(policy_name) if policy_name is not None else None  # before creating
    key = passphrase(key_file, ENV_KEY, "New passphrase", confirm=True)
    with InteractionLog.create(store, key) as log:
        if policy is not None:
            StoreSettings(log.store).set("policy", policy.to_dict())
    unit = f" (unit of privacy: {policy.privacy.unit})" if policy is not None else ""
    click.echo(f"created store {store}{unit}")


def _cmd_import(store: Path, file: Path, skip_duplicates: bool, key_file: Path | None) -> None:
    """Append the interactions of a JSONL FILE ('-': stdin) in one transaction.

    Lines are the store's own records ({"prompt", "response", ...}, as `personal export`
    writes them), mlx-lm completions ({"prompt", "completion"}) or chats ({"messages": [...]}:
    one interaction per answered user turn). Interactions already in the store (same prompt
    and response) are reported: importing a file twice would make every one two privacy units
    and double its exposure; --skip-duplicates leaves them out."""
    from personal.privacy.ledger import store_unit

    name = "<stdin>" if str(file) == "-" else str(file)
    with open_log(store, key_file) as log:
        # Units follow the store's unit of privacy: under `day` the log derives each one from
        # ts; under `session` every line must name its session.
        log.unit_by = store_unit(log.store)  # type: ignore[assignment]  # validated
        try:
            with click.open_file(str(file), encoding="utf-8") as stream:
                interactions = list(_read_jsonl(stream, name, log.unit_by))  # before any write
        except UnicodeDecodeError as exc:
            raise InvalidInteraction(f"{name} is not UTF-8 text ({exc.reason})") from None
        duplicates = _duplicates(log, interactions)
        if duplicates and skip_duplicates:
            drop = set(duplicates)
            interactions = [it for i, it in enumerate(interactions) if i not in drop]
        ids = log.append_many(interactions)
    if duplicates and skip_duplicates:
        click.echo(f"skipped {len(duplicates)} interaction(s) already in the store", err=True)
    elif duplicates:
        click.echo(
            f"warning: {len(duplicates)} imported interaction(s) repeat a prompt and response "
            "already in the store (or earlier in the file); each copy is a separate privacy "
            "unit, so their content is exposed once per copy. Next time pass "
            "--skip-duplicates to leave such copies out",
            err=True,
        )
    click.echo(f"imported {len(ids)} interactions into {store}")


def _cmd_export(store: Path, key_file: Path | None) -> None:
    """Write every record as JSONL to stdout (plaintext: handle with care)."""
    bad: list[int] = []

    def on_bad(record_id: int, exc: StoreError) -> None:
        bad.append(record_id)
        _report_bad(record_id, exc)

    with open_log(store, key_file) as log:
        log.export_jsonl(sys.stdout, on_bad=on_bad)
    if bad:
        raise StoreError(
            f"{len(bad)} record(s) could not be opened and were left out: run `personal verify`"
        )


def _cmd_erase(
    store: Path, units: tuple[str, ...], before: str | None, key_file: Path | None
) -> None:
    """Erase the records of units (--unit, repeatable) or older than a date (--before)."""
    if bool(units) == (before is not None):
        raise click.UsageError("give --unit (one or more) or --before, not both")
    with open_log(store, key_file) as log:
        report = log.erase(list(units) or None, before=before)
    shredded = f", destroyed {len(report.epochs_shredded)} data key(s)"
    click.echo(f"erased {report.records} record(s){shredded if report.epochs_shredded else ''}")
    if not report.purged:
        click.echo(
            "warning: another process is reading the store; the WAL will be purged "
            "at the next checkpoint",
            err=True,
        )


def _cmd_rotate(store: Path, key_file: Path | None, new_key_file: Path | None) -> None:
    """Re-wrap the store's data keys under a new passphrase."""
    with open_log(store, key_file) as log:
        new = passphrase(new_key_file, ENV_NEW_KEY, "New passphrase", confirm=True)
        log.store.rotate_keys(new)
    click.echo(f"rotated the keys of {store}: open it with the new passphrase from now on")


def _cmd_verify(store: Path, key_file: Path | None, as_json: bool) -> None:
    """Decrypt every record and every sealed row of every table, verify the privacy ledger
    and check the database; exit 1 if anything is wrong."""
    from personal.integrity import verify_store

    with open_log(store, key_file) as log:
        report = verify_store(log)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"checked {report.records} record(s) and {report.rows} other sealed row(s)")
        click.echo(f"integrity check: {'; '.join(report.integrity)}")
        for epoch, error in report.bad_epochs:
            click.echo(f"bad key epoch {epoch}: {error}")
        for bad in report.bad_records:
            click.echo(f"bad record {bad.id}: {bad.error}")
        for row in report.bad_rows:
            fix = "derived: `personal repair` rebuilds it" if row.derived else "restore a backup"
            click.echo(f"bad {row.table} row {row.row!r} ({fix}): {row.error}")
        for problem in report.ledger_problems:
            click.echo(f"ledger: {problem}")
        for note in report.notes:
            click.echo(f"note: {note}")
        click.echo("ok" if report.ok else "FAILED")
    click.get_current_context().exit(0 if report.ok else 1)


def _cmd_repair(store: Path, key_file: Path | None) -> None:
    """Rebuild derived state (replay buffer, EWC state, round bookkeeping) whose sealed rows
    fail to open; records and the ledger are never written. Exit 1 if something that is not
    derived is still wrong."""
    from personal.integrity import repair_store

    with open_log(store, key_file) as log:
        report = repair_store(log)
    for line in report.repaired or ["nothing to rebuild: every derived row opens"]:
        click.echo(line)
    for line in report.remaining:
        click.echo(f"not repaired (not derived state; restore it from a backup): {line}")
    click.get_current_context().exit(0 if report.ok else 1)


def _cmd_stats(store: Path, key_file: Path | None, as_json: bool) -> None:
    """Show counts, time span, key epochs and sizes (nothing is decrypted)."""
    with open_log(store, key_file) as log:
        stats = log.stats()
    if as_json:
        click.echo(json.dumps(stats.to_json(), indent=2))
    else:
        for line in stats.lines():
            click.echo(line)


def _command(group: click.Group, name: str, fn: Callable[..., None], *decorators: Any) -> None:
    for decorate in reversed(decorators):
        fn = decorate(fn)
    group.command(name, help=fn.__doc__)(fn)


def register(group: click.Group) -> None:
    """Add the store commands to the ``personal`` group."""
    json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    policy_opt = click.option(
        "--policy",
        "policy_name",
        default=None,
        help="Record the policy the store will train under (its unit of privacy governs "
        "imports); default: decided by the first train.",
    )
    _command(group, "init", _cmd_init, store_argument, policy_opt, key_file_option)
    file_arg = click.argument(
        "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
    )
    skip_dups = click.option(
        "--skip-duplicates",
        is_flag=True,
        help="Leave out interactions whose prompt and response are already in the store.",
    )
    _command(group, "import", _cmd_import, store_argument, file_arg, skip_dups, key_file_option)
    _command(group, "export", _cmd_export, store_argument, key_file_option)
    unit_opt = click.option("--unit", "units", multiple=True, help="A privacy unit to erase.")
    before_opt = click.option("--before", help="Erase records older than this date or time.")
    _command(group, "erase", _cmd_erase, store_argument, unit_opt, before_opt, key_file_option)
    new_key = click.option(
        "--new-key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"File holding the new passphrase (default: ${ENV_NEW_KEY}, else a prompt).",
    )
    _command(group, "rotate-keys", _cmd_rotate, store_argument, key_file_option, new_key)
    _command(group, "verify", _cmd_verify, store_argument, key_file_option, json_flag)
    _command(group, "repair", _cmd_repair, store_argument, key_file_option)
    _command(group, "stats", _cmd_stats, store_argument, key_file_option, json_flag)
