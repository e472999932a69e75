"""personal.kernels: built here, equal to MLX's own ops (values and gradients), safe fallbacks."""

from __future__ import annotations

import sys
from pathlib import Path

from personal import kernels
from personal.errors import KernelBuildError
from personal.kernels import build as kbuild

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU kernels")


@linux
def test_the_kernels_build_and_load_here() -> None:
    # make install provides the compiler and nanobind: on Linux they must be in use.
    got = kernels.status()
    assert got.available, got.reason
    assert kernels.applies(mx.zeros((2, 3)))
    assert not kernels.applies(mx.zeros((2, 3), dtype=mx.bfloat16))
    assert not kernels.applies(mx.zeros((0,)))


def _rows(seed: int, shape: tuple[int, ...], spread: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * spread).astype(np.float32)


shapes = st.lists(st.integers(1, 5), min_size=0, max_size=2).flatmap(
    lambda lead: st.integers(1, 300).map(lambda last: (*lead, last))
)


@linux
@settings(max_examples=25, deadline=None)
@given(shape=shapes, spread=st.floats(0.01, 40.0), seed=st.integers(0, 2**16))
def test_softmax_logsumexp_sigmoid_and_gradients_equal_mlx(
    shape: tuple[int, ...], spread: float, seed: int
) -> None:
    x = mx.array(_rows(seed, shape, spread))
    w = mx.array(_rows(seed + 1, shape, 1.0))
    pairs = [
        (kernels.softmax, lambda a: mx.softmax(a, axis=-1, precise=True), w),
        (kernels.logsumexp, lambda a: mx.logsumexp(a, axis=-1), w[..., 0]),
        (kernels.sigmoid, mx.sigmoid, w),
    ]
    for ours, theirs, weight in pairs:
        np.testing.assert_allclose(np.array(ours(x)), np.array(theirs(x)), rtol=2e-6, atol=2e-6)
        got = mx.grad(lambda a, f=ours, g=weight: (f(a) * g).sum())(x)
        want = mx.grad(lambda a, f=theirs, g=weight: (f(a) * g).sum())(x)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=2e-6)


@linux
def test_edges_masks_nan_and_layouts() -> None:
    # A masked attention row: -inf entries get (practically) zero weight.
    row = mx.array([[0.0, -mx.inf, 1.0, -mx.inf]])
    np.testing.assert_allclose(
        np.array(kernels.softmax(row)), np.array(mx.softmax(row, axis=-1)), atol=1e-30
    )
    assert np.isnan(np.array(kernels.softmax(mx.array([[0.0, float("nan")]])))).all()
    assert np.isnan(np.array(kernels.sigmoid(mx.array([float("nan")])))).all()
    np.testing.assert_allclose(
        np.array(kernels.sigmoid(mx.array([-1e4, 0.0, 1e4]))), [0.0, 0.5, 1.0], atol=1e-30
    )
    # Non-contiguous (transposed, broadcast) inputs are laid out before the kernel reads them.
    x = mx.array(_rows(3, (7, 5), 3.0))
    for view in (x.T, mx.broadcast_to(x[:1], (4, 5))):
        np.testing.assert_allclose(
            np.array(kernels.softmax(view)), np.array(mx.softmax(view, axis=-1)), rtol=2e-6
        )
    compiled = mx.compile(lambda a: kernels.logsumexp(a) + kernels.sigmoid(a).sum(-1))
    np.testing.assert_allclose(
        np.array(compiled(x)),
        np.array(mx.logsumexp(x, axis=-1) + mx.sigmoid(x).sum(-1)),
        rtol=2e-6,
    )


def test_off_switch_and_other_dtypes_use_mlx() -> None:
    x = mx.array(_rows(0, (3, 9), 2.0)).astype(mx.bfloat16)
    assert mx.array_equal(kernels.softmax(x), mx.softmax(x, axis=-1, precise=True))
    y = mx.array(_rows(1, (3, 9), 2.0))
    with kernels.use(False):
        assert not kernels.applies(y)
        assert mx.array_equal(kernels.sigmoid(y), mx.sigmoid(y))


@linux
def test_threads_setting_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    x = mx.array(_rows(5, (64, 2048), 5.0))  # above the parallel threshold
    one = kernels.softmax(x)
    module = kernels._kernels()
    module.set_threads(2)
    try:
        np.testing.assert_allclose(np.array(kernels.softmax(x)), np.array(one), rtol=1e-7)
    finally:
        module.set_threads(1)


# --- the build --------------------------------------------------------------------------------


def _fake_compiler(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-cxx"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n{body}\n'
    )
    script.chmod(0o755)
    return str(script)


@linux
def test_a_compiler_error_is_a_named_error_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kbuild.DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(
        "CXX", _fake_compiler(tmp_path, 'echo "fastkernels.cpp:1: error: boom" >&2; exit 1')
    )
    with pytest.raises(KernelBuildError, match="boom"):
        kbuild.build()
    leftovers = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in leftovers if p.suffix in (".so", ".tmp")]  # nothing half-written


@linux
def test_no_compiler_is_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(KernelBuildError, match="no C\\+\\+ compiler"):
        kbuild.build()


@linux
def test_the_cache_key_covers_the_source_and_a_build_lands_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kbuild.DIR_ENV, str(tmp_path / "cache"))
    # A "compiler" that writes its -o argument: the build renames it into place.
    cxx = _fake_compiler(tmp_path, 'while [ "$1" != -o ]; do shift; done; echo built > "$2"')
    first = kbuild.build_key(cxx)
    monkeypatch.setenv("CXX", cxx)
    built = kbuild.build()
    assert built.read_text() == "built\n" and built.parent.name == first
    assert kbuild.build() == built  # cached: not rebuilt
    source = tmp_path / "fastkernels.cpp"
    source.write_text(kbuild.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(kbuild, "SOURCE", source)
    assert kbuild.build_key(cxx) != first


@linux
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_vmap_over_any_axis_equals_mlx(axis: int) -> None:
    x = mx.array(_rows(11, (3, 4, 5), 4.0))
    for ours, theirs in (
        (kernels.softmax, lambda a: mx.softmax(a, axis=-1, precise=True)),
        (kernels.logsumexp, lambda a: mx.logsumexp(a, axis=-1)),
        (kernels.sigmoid, mx.sigmoid),
    ):
        got = mx.vmap(ours, in_axes=axis)(x)
        want = mx.vmap(theirs, in_axes=axis)(x)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=2e-6, atol=2e-6)
        grad = mx.grad(lambda a, f=ours: (mx.vmap(f, in_axes=axis)(a) ** 2).sum())(x)
        want_grad = mx.grad(lambda a, f=theirs: (mx.vmap(f, in_axes=axis)(a) ** 2).sum())(x)
        np.testing.assert_allclose(np.array(grad), np.array(want_grad), rtol=1e-5, atol=2e-6)


@linux
def test_box_muller_sums_checks_shapes_and_honours_the_off_switch() -> None:
    words = np.arange(4 * 9, dtype=np.uint64).reshape(4, 9) * np.uint64(0x9E3779B97F4A7C15)
    out = np.zeros(9)
    assert kernels.box_muller_sums(words, out)
    assert np.all(np.isfinite(out)) and np.all(out != 0)
    with pytest.raises(ValueError, match=r"\(4, n\)"):
        kernels.box_muller_sums(words[:3].copy(), np.zeros(9))
    with pytest.raises(ValueError, match=r"\(4, n\)"):
        kernels.box_muller_sums(words, np.zeros(8))
    untouched = np.full(9, 7.0)
    with kernels.use(False):
        assert not kernels.box_muller_sums(words, untouched)
    assert np.all(untouched == 7.0)
