"""The fingerprint of a base model: SHA-256 over its config, weights and tokenizer files.

An adapter is bound to the exact base it was trained on by this fingerprint, so it must change
whenever any byte that affects the model's outputs changes, and must be cheap to recompute when
the OS hands us the same model again.

Format: ``"sha256:" + hex(SHA-256(lines))`` where ``lines`` is ``"<name>\\t<size>\\t<sha256>\\n"``
for every fingerprinted file, sorted by name. Per-file digests are streamed in 4 MiB chunks
(hashlib releases the GIL and uses SHA-NI: ~1.5 GB/s) and cached per file, keyed by the file's
stat signature (device, inode, size, mtime_ns, ctime_ns). ``ctime`` cannot be set from user
space, so a file rewritten in place — even with its mtime restored — misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from personal.filesafety import atomic_write_text

CHUNK = 4 * 1024 * 1024
_CACHE_VERSION = 1

# Files that change what the model computes or how text maps to tokens.
_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
    "chat_template.jinja",
)


def fingerprint_files(model_dir: Path) -> list[Path]:
    """The files of ``model_dir`` that the fingerprint covers, sorted by name."""
    found: set[Path] = set()
    for pattern in _PATTERNS:
        found.update(p for p in model_dir.glob(pattern) if p.is_file())
    return sorted(found, key=lambda p: p.name)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed so memory stays flat for multi-GB weights."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def cache_dir() -> Path:
    """Where `personal` caches derived data (``$PERSONAL_CACHE_DIR`` or the XDG cache dir)."""
    if env := os.environ.get("PERSONAL_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "personal"


class _DigestCache:
    """Per-file digest cache in one JSON file; unreadable or foreign content is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        self.dirty = False
        try:
            data = json.loads(path.read_text())
            if data.get("version") == _CACHE_VERSION and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, ValueError, AttributeError):
            pass

    def get(self, file: Path) -> str | None:
        entry = self.entries.get(str(file.resolve()))
        if isinstance(entry, dict) and entry.get("stat") == _stat_key(file):
            digest = entry.get("sha256")
            return digest if isinstance(digest, str) and len(digest) == 64 else None
        return None

    def put(self, file: Path, digest: str, stat_before: list[int]) -> None:
        # Only cache when the file did not change while we hashed it.
        if _stat_key(file) == stat_before:
            self.entries[str(file.resolve())] = {"stat": stat_before, "sha256": digest}
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"version": _CACHE_VERSION, "files": self.entries})
            atomic_write_text(self.path, text)  # readers see the old or the new cache
        except OSError:
            pass  # a read-only cache dir only costs speed


def fingerprint_directory(model_dir: str | Path, *, use_cache: bool = True) -> str:
    """Fingerprint a model directory (see module docstring for the exact definition).

    Args:
        model_dir: an mlx-lm model directory.
        use_cache: reuse per-file digests whose stat signature is unchanged.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    model_dir = Path(model_dir)
    cache = _DigestCache(cache_dir() / "fingerprints.json") if use_cache else None
    lines = []
    for file in fingerprint_files(model_dir):
        digest = cache.get(file) if cache else None
        if digest is None:
            stat_before = _stat_key(file)
            digest = sha256_file(file)
            if cache:
                cache.put(file, digest, stat_before)
        lines.append(f"{file.name}\t{file.stat().st_size}\t{digest}\n")
    if cache:
        cache.save()
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()
