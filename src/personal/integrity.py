"""A whole store's integrity: verify every sealed row of every table; rebuild derived state.

:func:`verify_store` is what ``personal verify`` runs. Beyond the records (SQLite's integrity
check, every data key, every record: :meth:`InteractionLog.verify`) it opens every sealed row of
the other tables -- the settings (policy, base, migration, round bookkeeping), the EWC state, the
replay buffer -- and runs the privacy ledger's full verification (every entry's seal, link and
hash, every charge against the lifetime contract, the anchor). Nothing a command later refuses
to read passes ``verify``.

:func:`repair_store` (``personal repair``) rebuilds the **derived** state whose sealed row fails
to open, under the store's round lock, and touches nothing else:

* ``replay_buffer``: rebuilt from the log: the units the log still holds that earlier rounds
  offered (records up to the round high-water mark) are offered again, in order of arrival, to
  a fresh reservoir drawn by the CSPRNG. Like the original, the choice depends on unit ids and
  their order only, never on the records' content (:mod:`personal.training.replay`).
* ``ewc_state``: dropped; the next accepted round anchors EWC on the adapter it activates.
* settings ``update_trigger``, ``continual_public_cursor``: reset.
* setting ``continual_last_record_id`` (the round high-water mark): reset to 0, so every logged
  unit is a candidate of the next round again and is charged for it like any candidate (the
  lifetime budget still holds: the ledger refuses a charge past it).
* indexes, when they are all SQLite's integrity check finds wrong: rebuilt (``REINDEX``).
* setting ``policy``: dropped; the lifetime contract stays in the ledger's genesis, so no budget
  can change; the next ``train`` takes ``--policy`` (or the default) and is checked against it.
* the memory index (:mod:`personal.store.memory`), when a row fails to open, is missing for a
  record or belongs to none: rebuilt from the records (``personal memory rebuild``).

Records, the ledger, its anchor, the ``base`` and ``migration`` settings and the adapters are
never written: a bad one is reported, and only a backup restores it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from personal.errors import PersonalError
from personal.store import memory as memory_index
from personal.store.core import Store
from personal.store.log import InteractionLog
from personal.store.verify import BadRow, VerifyReport, check_sealed_rows

SETTINGS_TABLE = "store_settings"
EWC_TABLE = "ewc_state"
REPLAY_TABLE = "replay_buffer"
LAST_ID = "continual_last_record_id"  # personal.training.continual.LAST_ID_KEY
_RESET_SETTINGS = {
    "update_trigger": "reset the update trigger (it counts new units from now on)",
    "continual_public_cursor": "reset the public-replay cursor (it starts the corpus again)",
    LAST_ID: (
        "reset the round high-water mark to 0: every logged unit is a candidate of the next "
        "round again, and is charged for it like any candidate (the lifetime budget holds)"
    ),
    "policy": (
        "dropped the recorded policy: the lifetime contract stays in the ledger; pass "
        "--policy to the next train"
    ),
}


def _derived_setting(name: str) -> bool:
    return name in _RESET_SETTINGS


def _always(name: str) -> bool:
    return True


_SEALED_TABLES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    (SETTINGS_TABLE, _derived_setting),
    (EWC_TABLE, _always),
    (REPLAY_TABLE, _always),
)


def verify_store(log: InteractionLog) -> VerifyReport:
    """Check every record, every sealed row of every table and the privacy ledger.

    Never raises for what it finds: everything wrong is in the report (``ok`` false). Like
    :meth:`Ledger.verify`, it repairs only a sound ledger's unit cache and an anchor lag of one
    (listed in ``notes``).
    """
    report = log.verify()
    store = log.store
    for table, derived in _SEALED_TABLES:
        check_sealed_rows(store, report, table, derived)
    _check_memory(log, report)
    from personal.privacy.ledger import Ledger

    if Ledger.exists(store):
        report.ledger_problems, notes = _verify_ledger(store)
        report.notes += notes
    return report


def _check_memory(log: InteractionLog, report: VerifyReport) -> None:
    """The memory index's rows, and that it covers exactly the records (derived state)."""
    try:
        if not memory_index.enabled(log.store.db):
            return
        report.rows += memory_index.count(log.store.db)
        bad_records = {b.id for b in report.bad_records}
        problems = memory_index.check(log, skip=bad_records)
    except PersonalError as exc:
        report.integrity.append(f"reading the memory index failed: {exc}")
        return
    for problem in problems:
        report.bad_rows.append(BadRow(memory_index.TABLE, str(problem.row), problem.error, True))


def _verify_ledger(store: Store) -> tuple[list[str], list[str]]:
    """The ledger's problems and notes; a ledger too damaged to open is still verified entry
    by entry (from the database alone, without its loaded state), so every problem is listed."""
    from personal.privacy.ledger import Ledger
    from personal.privacy.ledger.anchor import as_anchor

    refused: PersonalError | None = None
    try:
        ledger = Ledger.open(store)
    except PersonalError as exc:
        ledger, refused = Ledger(store, as_anchor(store, None)), exc
    try:
        found = ledger.verify()
    except PersonalError as exc:
        return [str(refused or exc)], []
    problems = list(found.problems)
    if refused is not None and not problems:
        problems.append(str(refused))
    return problems, [*found.repairs, *found.notes]


@dataclass
class RepairReport:
    """What :func:`repair_store` did and what it left for a backup.

    Attributes:
        repaired: One sentence per derived row rebuilt, reset or dropped.
        remaining: What is still wrong and is not derived state (records, the ledger, the
            ``base``/``migration`` settings, key epochs, the database file).
    """

    repaired: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing is left wrong."""
        return not self.remaining


def repair_store(log: InteractionLog) -> RepairReport:
    """Rebuild the derived state whose sealed rows fail to open (module docstring).

    Holds the store's round lock (:class:`~personal.errors.RoundInProgress` while a round
    runs), so a round never sees half-rebuilt state.
    """
    from personal.training.lock import round_lock

    with round_lock(log.store.path):
        reindexed = _reindex(log.store)
        found = verify_store(log)
        out = RepairReport(repaired=reindexed, remaining=_not_derived(found))
        bad = {(b.table, b.row) for b in found.bad_rows if b.derived}
        for table, name in sorted(bad):
            if table == SETTINGS_TABLE:
                _delete(log, table, name)
                out.repaired.append(f"setting {name!r}: {_RESET_SETTINGS[name]}")
        if any(table == EWC_TABLE for table, _ in bad):
            _delete(log, EWC_TABLE, None)
            out.repaired.append(
                "EWC state: dropped; the next accepted round anchors EWC on its adapter"
            )
        if any(table == REPLAY_TABLE for table, _ in bad):
            out.repaired.append(_rebuild_replay(log))
        if any(table == memory_index.TABLE for table, _ in bad):
            built = memory_index.rebuild(log)
            out.repaired.append(f"memory index: rebuilt from the records ({built.entries} entries)")
    return out


_INDEX_DAMAGE = re.compile(r"missing from index|wrong # of entries in index|non-unique entry")


def _reindex(store: Store) -> list[str]:
    """Rebuild the indexes when they are all SQLite's integrity check finds wrong (an index is
    derived from its table: nothing is lost)."""
    problems = store.integrity_check()
    if problems == ["ok"] or not all(_INDEX_DAMAGE.search(p) for p in problems):
        return []
    with store.atomic() as db:
        db.execute("REINDEX")
    return [f"indexes: rebuilt from the tables ({len(problems)} index problem(s) found)"]


def _not_derived(report: VerifyReport) -> list[str]:
    remaining = [f"record {b.id}: {b.error}" for b in report.bad_records]
    remaining += [f"key epoch {e}: {m}" for e, m in report.bad_epochs]
    if report.integrity != ["ok"]:
        remaining += [f"database: {line}" for line in report.integrity]
    remaining += [f"{b.table} row {b.row}: {b.error}" for b in report.bad_rows if not b.derived]
    remaining += [f"ledger: {p}" for p in report.ledger_problems]
    return remaining


def _delete(log: InteractionLog, table: str, name: str | None) -> None:
    with log.store.atomic() as db:
        if name is None:
            db.execute(f"DELETE FROM {table}")
        else:
            db.execute(f"DELETE FROM {table} WHERE name = ?", [name])


def _rebuild_replay(log: InteractionLog) -> str:
    """A fresh reservoir of the units earlier rounds offered, in order of arrival (CSPRNG)."""
    from personal.policy import Policy, load_policy
    from personal.store.settings import StoreSettings
    from personal.training.replay import ReplayBuffer

    settings = StoreSettings(log.store)
    recorded = settings.get("policy")  # readable: a bad one was dropped above
    policy = Policy.from_dict(recorded) if recorded is not None else load_policy("default")
    high_water = int(settings.get(LAST_ID, 0))
    rows = log.store.db.execute(
        "SELECT unit FROM records WHERE id <= ? GROUP BY unit ORDER BY min(id)", [high_water]
    ).fetchall()
    _delete(log, REPLAY_TABLE, None)
    buffer = ReplayBuffer.open(log.store, policy.continual.buffer_capacity)
    buffer.offer(r[0] for r in rows)
    buffer.save()
    return (
        f"replay buffer: rebuilt from the log ({len(buffer)} of {len(rows)} units offered by "
        "earlier rounds kept, chosen by the CSPRNG)"
    )


__all__ = ["BadRow", "RepairReport", "repair_store", "verify_store"]
