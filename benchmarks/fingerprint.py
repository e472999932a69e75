"""How fast is a base model fingerprinted, cold and cached?

Writes a ``--gb`` GB random weights file (plus config and tokenizer) in a temporary directory,
fingerprints it with an empty cache (streamed SHA-256), then again (stat-keyed cache hit).
Prints ``{"gb", "cold_s", "cold_gb_per_s", "cached_s"}``. Goal: a 1 GB model in seconds.

    python benchmarks/fingerprint.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from personal.model.fingerprint import fingerprint_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
        (model / "tokenizer.json").write_text("{}")
        chunk = os.urandom(64 * 1024 * 1024)
        with open(model / "model.safetensors", "wb") as f:
            for _ in range(max(1, round(args.gb * 1024 / 64))):
                f.write(chunk)
        os.environ["PERSONAL_CACHE_DIR"] = str(Path(tmp) / "cache")
        size = (model / "model.safetensors").stat().st_size / 1e9
        start = time.perf_counter()
        cold = fingerprint_directory(model)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        assert fingerprint_directory(model) == cold
        cached_s = time.perf_counter() - start
    result = {
        "gb": round(size, 3),
        "cold_s": round(cold_s, 3),
        "cold_gb_per_s": round(size / cold_s, 2),
        "cached_s": round(cached_s, 5),
    }
    if not args.json:
        print(f"{size:.2f} GB: {cold_s:.2f} s cold, {cached_s * 1000:.2f} ms cached")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
