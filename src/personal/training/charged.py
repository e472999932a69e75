"""A true message when the disk fills up in the middle of a round: what was already charged.

A round commits several transactions: the validation charge, the training charge, the adapter,
its activation, the round's finish entry, the continual state. The store's generic disk-full
error says that *its* write was rolled back; the charges committed before it stay in the
privacy ledger and are never refunded. Saying "the store is unchanged" would invite a retry
that spends the budget again, so :func:`charges_on_disk_full` re-raises the error naming the
rounds the interrupted operation charged and how far the largest per-unit ε moved.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from personal.errors import DiskFull, PersonalError

_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextmanager
def charges_on_disk_full(ledger: Any) -> Iterator[None]:
    """Run the block; a disk-full error (:class:`DiskFull`, or an ``OSError`` with ``ENOSPC``,
    ``EFBIG`` or ``EDQUOT``) leaves it as a :class:`DiskFull` that names what was charged."""
    last, eps_before = _mark(ledger)
    try:
        yield
    except DiskFull as exc:
        raise DiskFull(_message(ledger, last, eps_before)) from exc
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        raise DiskFull(_message(ledger, last, eps_before)) from exc


def _mark(ledger: Any) -> tuple[int, float]:
    rounds = ledger.rounds()
    return (rounds[-1].round_id if rounds else 0), max(ledger.epsilons().values(), default=0.0)


def _message(ledger: Any, last: int, eps_before: float) -> str:
    head = (
        "the disk is full (or the file-size limit was reached): the write that failed was "
        "rolled back"
    )
    try:
        charged = [r for r in ledger.rounds() if r.round_id > last and r.charged]
        eps_after = max(ledger.epsilons().values(), default=0.0)
    except PersonalError:
        return (
            f"{head}, and what the round had already charged could not be read back: run "
            "`personal audit` to see it before training again. Free some space first"
        )
    if not charged:
        return f"{head}; nothing was charged to the privacy ledger. Free some space and retry"
    rounds = ", ".join(f"#{r.round_id} ({r.purpose}, {r.eligible_units} units)" for r in charged)
    return (
        f"{head}, but {len(charged)} round(s) had already been charged to the privacy ledger "
        f"and stay charged: {rounds}; the largest per-unit ε went from {eps_before:.4g} to "
        f"{eps_after:.4g}. Free some space before training again: every new round is charged "
        "again (`personal audit` shows the ledger)"
    )
