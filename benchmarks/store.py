"""Benchmark: the encrypted interaction log against plain SQLite, on the same rows, same run.

Claims checked (see docs/store.md):

* batched encrypted appends reach >= 85% of the throughput of a plain sqlite-utils insert of
  the same 1 KB interactions into the same schema and settings (WAL, synchronous=FULL,
  secure_delete) — SQLCipher's published overhead is 5-15%;
* a full scan with decryption reads >= 100,000 records/s.

Encrypted and plain batches are interleaved (alternating which goes first) and medians are
reported, so drift on a shared machine hits both sides alike.

    python benchmarks/store.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from personal.store import Interaction, InteractionLog, RawKey
from personal.store import db as dbm
from personal.store.records import encode_payload


def make_batch(rng: random.Random, size: int, start: int) -> list[Interaction]:
    """``size`` interactions of ~1 KB (two ~500-character texts)."""
    now = datetime.now(UTC)
    letters = string.ascii_letters + "     "
    return [
        Interaction(
            "".join(rng.choices(letters, k=500)),
            "".join(rng.choices(letters, k=500)),
            unit=f"session-{(start + i) // 20}",
            ts=now,
            source="bench",
        )
        for i in range(size)
    ]


def plain_table(path: Path) -> dbm.Database:
    """The same schema and settings as the log, with the payload in cleartext."""
    db = dbm.connect(path)
    db["plain"].create(
        {"id": int, "unit": str, "ts": str, "source": str, "payload": bytes}, pk="id"
    )
    for col in ("unit", "ts"):
        db["plain"].create_index([col])
    return db


def plain_append(db: dbm.Database, batch: list[Interaction]) -> None:
    """What an app would do without encryption: encode and insert (sqlite-utils)."""
    rows = [
        {
            "unit": it.unit,
            "ts": dbm.format_ts(it.ts or datetime.now(UTC)),
            "source": it.source,
            "payload": encode_payload(it.prompt, it.response, it.feedback, it.metadata),
        }
        for it in batch
    ]
    with dbm.atomic(db):
        db["plain"].insert_all(rows, batch_size=len(rows))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(batches: int, batch_size: int, seed: int) -> dict[str, float]:
    """Interleaved encrypted/plain batched appends, then a decrypting scan."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        log = InteractionLog.create(Path(tmp) / "store", RawKey(bytes(32)))
        plain = plain_table(Path(tmp) / "plain.db")
        enc_rates, plain_rates = [], []
        for i in range(batches):
            batch = make_batch(rng, batch_size, i * batch_size)
            order = [("enc", log.append_many), ("plain", lambda b: plain_append(plain, b))]
            for name, fn in order if i % 2 == 0 else order[::-1]:
                rate = batch_size / timed(fn, batch)
                (enc_rates if name == "enc" else plain_rates).append(rate)
        scans = []
        for _ in range(3):
            start = time.perf_counter()
            n = sum(1 for _ in log.iter_records())
            scans.append(n / (time.perf_counter() - start))
        log.close()
        plain.close()
    enc, base = statistics.median(enc_rates), statistics.median(plain_rates)
    return {
        "encrypted_append_per_s": round(enc),
        "plain_append_per_s": round(base),
        "append_ratio": round(enc / base, 3),
        "decrypt_scan_per_s": round(statistics.median(scans)),
        "records": batches * batch_size,
        "batch_size": batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="batches per side")
    parser.add_argument("--batch-size", type=int, default=1000, help="interactions per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.batches, args.batch_size, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")
    ok = result["append_ratio"] >= 0.85 and result["decrypt_scan_per_s"] >= 100_000
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
