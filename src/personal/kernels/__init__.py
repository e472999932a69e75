"""Fast CPU kernels for the element-wise maths MLX's Linux CPU backend makes slow.

The ``mlx[cpu]`` wheels compute ``exp`` element by element at about 22 ns an element (15-20x
torch or numpy), and a training step spends about half its time there: the softmax over the
vocabulary in the loss, the attention softmax and SiLU. This package compiles three MLX
primitives (``softmax`` and ``logsumexp`` over the last axis, ``sigmoid``; ``fastkernels.cpp``),
and the DP noise's Box-Muller transform in float64 (``noise_transform.cpp``),
on the user's machine the first time they are needed (:mod:`personal.kernels.build`, about 30 s,
cached), and :mod:`personal.model.fastmath` routes the training maths through them. Each has a
vjp, so gradients flow as through MLX's own ops; results agree within float32 rounding (tested).

They are used only where they help and are safe: float32 arrays on the CPU device, Linux.
Anywhere else (macOS with Metal, a CUDA device, bfloat16) MLX's own ops run. When the kernels
can't be built (no compiler, nanobind missing) :class:`~personal.errors.SlowKernelsWarning` says
so once and MLX's ops run: slower, never wrong. ``PERSONAL_FAST_KERNELS=0`` turns them off;
``PERSONAL_KERNEL_THREADS=N`` gives each call N OpenMP threads (default 1).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from personal.errors import KernelBuildError, SlowKernelsWarning

import mlx.core as mx
import numpy as np

ENV_VAR = "PERSONAL_FAST_KERNELS"
#: Threads per kernel call (default 1, measured: see fastkernels.cpp's ``g_threads``).
THREADS_ENV = "PERSONAL_KERNEL_THREADS"


@dataclass(frozen=True)
class KernelStatus:
    """Whether the fast kernels are in use, and why (shown by ``personal info``)."""

    available: bool
    path: str | None
    reason: str


_module: ModuleType | None = None
_status: KernelStatus | None = None
_enabled = True  # see use()


def _disabled() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("0", "off", "false", "no")


def _load() -> KernelStatus:
    global _module
    if _disabled():
        return KernelStatus(False, None, f"{ENV_VAR}=0: MLX's own ops")
    if not sys.platform.startswith("linux"):
        return KernelStatus(False, None, "not Linux: MLX's own ops (Metal or Accelerate)")
    from personal.kernels.build import MODULE, build

    try:
        path = build()
    except KernelBuildError as exc:
        return KernelStatus(False, None, str(exc))
    # libgomp's threads spin between parallel regions unless told to sleep; on a shared
    # machine that spinning steals the cores the BLAS and the other processes need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        return KernelStatus(False, str(path), f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        probe = module.sigmoid(mx.zeros((1,), dtype=mx.float32))
        mx.eval(probe)
    except (ImportError, TypeError, RuntimeError) as exc:  # e.g. a nanobind ABI other than mlx's
        return KernelStatus(False, str(path), f"built but unusable ({exc}); MLX's own ops run")
    try:
        threads = max(1, int(os.environ.get(THREADS_ENV, "1")))
    except ValueError:
        threads = 1
    module.set_threads(threads)
    _module = module
    return KernelStatus(True, str(path), f"in use, {threads} thread(s) a call ({path})")


def status() -> KernelStatus:
    """Load (building if needed, once per process) and report; never raises."""
    global _status
    if _status is None:
        _status = _load()
        if not _status.available and not _disabled() and sys.platform.startswith("linux"):
            warnings.warn(
                f"personal.kernels unavailable: {_status.reason}. Training runs on MLX's own "
                f"CPU ops, about 1.6x slower (docs/performance.md). Set {ENV_VAR}=0 to "
                "silence this.",
                SlowKernelsWarning,
                stacklevel=3,
            )
    return _status


@contextmanager
def use(enabled: bool) -> Iterator[None]:
    """Within the block, build graphs with (True) or without (False) the kernels.

    What is traced inside decides: a step compiled (first called) under ``use(False)`` keeps
    MLX's own ops afterwards. Benchmarks use it to time both in one process.
    """
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def applies(x: mx.array) -> bool:
    """Whether the kernels take ``x``: float32, non-empty, on the CPU, kernels available."""
    return (
        _enabled
        and x.dtype == mx.float32
        and x.size > 0
        and x.ndim >= 1
        and mx.default_device() == mx.cpu
        and status().available
    )


def _kernels() -> ModuleType:
    if _module is None:
        raise RuntimeError("personal.kernels are not loaded; check applies() first")
    return _module


def box_muller_sums(words: np.ndarray, out: np.ndarray) -> bool:
    """The noise transform of :mod:`personal.privacy.noise` in one vectorised C++ pass.

    ``out[j]`` becomes the sum of the four Box-Muller normals built from ``words[:, j]``, as
    ``noise.py``'s numpy path computes them (within glibc libmvec's 4 ulp of libm's values;
    tested). Returns False, touching nothing, when the kernels are not in use (see
    :func:`use`), so the caller runs the numpy path. The GIL is released while it runs.

    Args:
        words: ``(4, n)`` C-contiguous uint64 random words.
        out: ``(n,)`` C-contiguous float64, written in place.
    """
    if not (_enabled and status().available):
        return False
    _kernels().box_muller_sums(words, out)
    return True


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis (as ``mx.softmax(x, axis=-1, precise=True)``)."""
    if not applies(x):
        return mx.softmax(x, axis=-1, precise=True)
    out: mx.array = _kernels().softmax(x)
    return out


def logsumexp(x: mx.array) -> mx.array:
    """``logsumexp`` over the last axis, which is dropped (as ``mx.logsumexp(x, axis=-1)``)."""
    if not applies(x):
        return mx.logsumexp(x, axis=-1)
    out: mx.array = _kernels().logsumexp(x)
    return out


def sigmoid(x: mx.array) -> mx.array:
    """Element-wise sigmoid (as ``mx.sigmoid``)."""
    if not applies(x):
        return mx.sigmoid(x)
    out: mx.array = _kernels().sigmoid(x)
    return out


__all__ = [
    "ENV_VAR",
    "THREADS_ENV",
    "KernelStatus",
    "applies",
    "box_muller_sums",
    "logsumexp",
    "sigmoid",
    "softmax",
    "status",
    "use",
]
