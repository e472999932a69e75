"""MLX runtime set-up: a fast BLAS on Linux, device and memory helpers.

Why this module exists: the ``mlx[cpu]`` wheels for Linux link a *reference* BLAS. A 2048²
float32 matmul takes ~5 s with it and ~0.08 s with OpenBLAS on the same 2 cores. MLX resolves
``cblas_sgemm`` through the dynamic linker, so loading an optimised BLAS with ``RTLD_GLOBAL``
*before* ``mlx.core`` is imported makes MLX use it with no rebuild.

A second trap, measured on our CI machines: Debian's OpenBLAS 0.3.21 does not recognise recent
Xeons and falls back to its ``Prescott`` (SSE3) kernels, 6x slower than its AVX-512 ones. We set
``OPENBLAS_CORETYPE`` from the CPU flags when the user has not set it.

:func:`configure_blas` runs when :mod:`personal` is imported. Set ``PERSONAL_BLAS=off`` to skip
it, or ``PERSONAL_BLAS=/path/to/libblas.so`` to name the library to load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from personal.errors import SlowBLASWarning

ENV_VAR = "PERSONAL_BLAS"

# Where Debian/Ubuntu put a threaded OpenBLAS (package libopenblas0-pthread), then generic names.
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)

_INSTALL_HINT = (
    "Install an optimised BLAS (Debian/Ubuntu: `apt-get install libopenblas0-pthread`; "
    "`make install` does this) or point PERSONAL_BLAS at a library exporting cblas_sgemm. "
    "Set PERSONAL_BLAS=off to silence this warning."
)


@dataclass(frozen=True)
class BLASStatus:
    """What :func:`configure_blas` did.

    Attributes:
        backend: ``"openblas"`` (or another library we loaded), ``"reference"`` (MLX's own slow
            BLAS), ``"accelerate"`` (macOS: MLX uses Apple's frameworks), or ``"disabled"``.
        library: path of the library loaded globally, if any.
        coretype: the ``OPENBLAS_CORETYPE`` in effect, if any.
        reason: a sentence explaining the outcome, shown by ``personal info`` and benchmarks.
    """

    backend: str
    library: str | None
    coretype: str | None
    reason: str

    @property
    def fast(self) -> bool:
        return self.backend not in ("reference", "disabled")


_status: BLASStatus | None = None


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def openblas_coretype(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family to force for these CPU flags, or None to let it detect.

    OpenBLAS only mis-detects CPUs newer than itself, and those all have AVX2 or AVX-512, so
    forcing the best family the flags allow is safe: every kernel it selects is supported.
    """
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def _find_library(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    for candidate in _CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    found = ctypes.util.find_library("openblas")
    return found


def configure_blas(*, warn: bool = True) -> BLASStatus:
    """Make MLX use an optimised BLAS on Linux; idempotent, returns what it did.

    Must run before ``mlx.core`` is imported; :mod:`personal` calls it on import. Warns with
    :class:`~personal.errors.SlowBLASWarning` when only the reference BLAS can be had.
    """
    global _status
    if _status is not None:
        return _status
    setting = os.environ.get(ENV_VAR, "").strip()
    if sys.platform == "darwin":
        _status = BLASStatus("accelerate", None, None, "macOS: MLX uses Accelerate/Metal.")
        return _status
    if setting.lower() in ("off", "0", "false", "no"):
        _status = BLASStatus("disabled", None, None, f"{ENV_VAR}={setting}: left MLX as is.")
        return _status
    if "mlx.core" in sys.modules:
        _status = BLASStatus(
            "reference",
            None,
            None,
            "mlx was imported before personal, too late to load a fast BLAS; "
            "import personal first.",
        )
    else:
        _status = _load_fast_blas(setting or None)
    if warn and not _status.fast:
        warnings.warn(f"{_status.reason} {_INSTALL_HINT}", SlowBLASWarning, stacklevel=2)
    return _status


def _load_fast_blas(explicit: str | None) -> BLASStatus:
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is None and platform.machine() in ("x86_64", "AMD64"):
        coretype = openblas_coretype(cpu_flags())
        if coretype is not None:
            # Read by OpenBLAS when it is loaded, so it must be set first.
            os.environ["OPENBLAS_CORETYPE"] = coretype
    library = _find_library(explicit)
    if library is None:
        return BLASStatus("reference", None, None, "No optimised BLAS (OpenBLAS) was found.")
    try:
        handle = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return BLASStatus("reference", None, None, f"Could not load {library}: {exc}.")
    if not hasattr(handle, "cblas_sgemm"):
        return BLASStatus("reference", None, None, f"{library} does not export cblas_sgemm.")
    name = "openblas" if "openblas" in Path(library).name else Path(library).name
    return BLASStatus(name, library, coretype, f"Loaded {library} globally before mlx.")


def blas_status() -> BLASStatus:
    """The outcome of :func:`configure_blas` (running it if it has not run)."""
    return configure_blas(warn=False)


def peak_memory_bytes() -> int:
    """Peak memory MLX has allocated since start or the last :func:`reset_peak_memory`."""
    import mlx.core as mx

    return int(mx.get_peak_memory())


def reset_peak_memory() -> None:
    """Reset MLX's peak-memory counter (call before the region you want to measure)."""
    import mlx.core as mx

    mx.reset_peak_memory()


def device_name() -> str:
    """The default MLX device, e.g. ``"cpu"`` or ``"gpu"``."""
    import mlx.core as mx

    return str(mx.default_device()).removeprefix("Device(").split(",")[0]
