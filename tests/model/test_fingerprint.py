"""The fingerprint changes with any relevant byte and is cached safely."""

from __future__ import annotations

import os
import shutil

from personal.model.fingerprint import cache_dir, fingerprint_directory

from hypothesis import given, settings
from hypothesis import strategies as st


def _model_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    (d / "README.md").write_text("not part of the model")
    return d


def test_stable_and_cached(tmp_path):
    d = _model_dir(tmp_path)
    first = fingerprint_directory(d)
    assert (cache_dir() / "fingerprints.json").exists()
    assert fingerprint_directory(d) == first == fingerprint_directory(d, use_cache=False)


def test_irrelevant_files_do_not_count(tmp_path):
    d = _model_dir(tmp_path)
    first = fingerprint_directory(d)
    (d / "README.md").write_text("changed")
    assert fingerprint_directory(d) == first


def test_same_content_elsewhere_same_fingerprint(tmp_path):
    d = _model_dir(tmp_path)
    copy = shutil.copytree(d, tmp_path / "copy")
    assert fingerprint_directory(copy) == fingerprint_directory(d)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["config.json", "model.safetensors", "tokenizer.json"]), st.data())
def test_any_flipped_byte_changes_it(tmp_path_factory, name, data):
    d = _model_dir(tmp_path_factory.mktemp("fp"))
    before = fingerprint_directory(d)
    path = d / name
    raw = bytearray(path.read_bytes())
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= 1 << data.draw(st.integers(0, 7))
    # Rewrite in place and restore the mtime: the cache must still not be fooled (ctime moves).
    stat = path.stat()
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint_directory(d) != before


def test_corrupt_cache_is_ignored(tmp_path):
    d = _model_dir(tmp_path)
    first = fingerprint_directory(d)
    (cache_dir() / "fingerprints.json").write_text("{garbage")
    assert fingerprint_directory(d) == first


def test_poisoned_cache_entry_is_not_trusted_after_change(tmp_path):
    import json

    d = _model_dir(tmp_path)
    fingerprint_directory(d)
    cache_file = cache_dir() / "fingerprints.json"
    data = json.loads(cache_file.read_text())
    for entry in data["files"].values():
        entry["stat"][2] += 1  # a stat signature that no longer matches
        entry["sha256"] = "0" * 64
    cache_file.write_text(json.dumps(data))
    assert fingerprint_directory(d) == fingerprint_directory(d, use_cache=False)
