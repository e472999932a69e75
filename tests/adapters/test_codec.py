"""The safetensors parser: agrees with MLX's on valid files, refuses every malformed one."""

from __future__ import annotations

import json
from pathlib import Path

from personal.adapters import codec
from personal.errors import AdapterCorrupt, ConfigError

import mlx.core as mx
import numpy as np
import pytest
from adapter_helpers import same
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.lists(
        st.tuples(
            hnp.arrays(
                np.float32,
                hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
                elements=st.floats(width=32, allow_nan=False),
            ),
            st.sampled_from(sorted(_DTYPES)),
        ),
        min_size=1,
        max_size=5,
    ),
    meta=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_agrees_with_mlx(arrays, meta):
    weights = {f"t{i}.lora_a": mx.array(a).astype(_DTYPES[d]) for i, (a, d) in enumerate(arrays)}
    data = codec.encode(weights, meta)
    ours, our_meta = codec.decode(data, where="x")
    theirs, their_meta = _mlx_load(data)
    assert same(ours, weights) and same(ours, theirs)
    assert our_meta == their_meta == meta


def _mlx_load(data: bytes):
    """mx.load of ``data`` through a file that is removed afterwards (no junk in /tmp)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "adapter.safetensors"
        path.write_bytes(data)
        return mx.load(str(path), return_metadata=True)


def _blob(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"\x01\x02", "shorter than"),
        (b"\xff" * 8 + b"{}", "header length"),
        ((3).to_bytes(8, "little") + b"{x}", "not JSON"),
        (_blob([], b""), "not a JSON object"),  # type: ignore[arg-type]
        (_blob({"a": _t(dtype="I64")}, b"\0" * 8), "unsupported dtype"),
        (_blob({"a": _t(shape=(3,))}, b"\0" * 8), "does not match its shape"),
        (_blob({"a": _t(shape=(-2,))}, b"\0" * 8), "invalid shape"),
        (_blob({"a": _t(offsets=(0, 8, 9))}, b"\0" * 8), "invalid data_offsets"),
        (_blob({"a": {**_t(), "extra": 1}}, b"\0" * 8), "exactly dtype"),
        (_blob({"a": _t()}, b"\0" * 4), "past the end"),
        (_blob({"a": _t(), "b": _t(offsets=(4, 12))}, b"\0" * 12), "overlaps"),
        (_blob({"a": _t(offsets=(4, 12))}, b"\0" * 12), "gap"),
        (_blob({"a": _t()}, b"\0" * 9), "after the last tensor"),
        (_blob({"__metadata__": {"k": 1}, "a": _t()}, b"\0" * 8), "__metadata__"),
    ],
)
def test_refuses_malformed(blob, why):
    with pytest.raises(AdapterCorrupt, match=why):
        codec.decode(blob, where="f")


def test_integer_adapters_are_refused_at_save():
    with pytest.raises(ConfigError, match="float32, float16 or bfloat16"):
        codec.check_dtypes({"a.lora_a": mx.zeros((2,), dtype=mx.int32)})
