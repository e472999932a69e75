"""Compile :mod:`personal.kernels`' C++ source into an MLX extension on this machine.

One ``g++`` invocation (about 30 s on 2 cores, once per machine): ``fastkernels.cpp`` and
nanobind's combined source, against the headers and ``libmlx.so`` of the installed ``mlx``,
with ``-O3 -march=native -fopenmp``. The result is cached under a key that covers everything
it depends on (the source, the mlx, nanobind and Python versions, the compiler and the CPU
flags), so a changed input builds a new file and a stale one is never loaded. The build writes
to a temporary name and renames it into place under a lock, so concurrent processes (the
simulator's workers) build it once and never load a half-written file.

Why nanobind's domain ``mlx``: ``mx.array`` is a nanobind type registered by ``mlx.core`` in its
own domain; an extension sees it only if it is built with the same domain and ABI (nanobind
3.x: internals version 22, as the mlx 0.32 wheels).

    python -m personal.kernels build      # what `make install` runs
    python -m personal.kernels status
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from personal.errors import KernelBuildError
from personal.filesafety import fsync_dir, locked
from personal.runtime import cpu_flags

SOURCE = Path(__file__).with_name("fastkernels.cpp")
#: The noise transform, compiled apart (noise_transform.cpp says why) into the same extension.
NOISE_SOURCE = Path(__file__).with_name("noise_transform.cpp")
MODULE = "_fastkernels"
#: ``$PERSONAL_KERNELS_DIR`` names the cache directly (tests share one across sessions).
DIR_ENV = "PERSONAL_KERNELS_DIR"
# CPU features that change what -march=native emits, so a cache copied to another CPU
# rebuilds instead of crashing on an illegal instruction.
_FLAG_PREFIXES = ("avx", "fma", "sse", "f16c", "bmi", "amx")


def _cache_root() -> Path:
    if env := os.environ.get(DIR_ENV):
        return Path(env)
    from personal.model.fingerprint import cache_dir

    return cache_dir() / "kernels"


def compiler() -> str | None:
    """The C++ compiler: ``$CXX``, else ``g++``, else ``c++`` (None when there is none)."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _cpu_key() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(_FLAG_PREFIXES))
    return platform.machine() + ":" + ",".join(flags)


def _compiler_version(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def _nanobind_dir() -> Path:
    try:
        import nanobind
    except ImportError as exc:
        raise KernelBuildError(
            "nanobind is not installed; `pip install 'nanobind>=3.0,<3.2'` (make install does)"
        ) from exc
    return Path(nanobind.include_dir()).parent


def _mlx_dir() -> Path:
    import mlx.core as mx

    return Path(mx.__file__).resolve().parent if mx.__file__ else Path()


def build_key(cxx: str) -> str:
    """A digest of every input of the build (see the module docstring)."""
    parts = [
        SOURCE.read_bytes().hex(),
        NOISE_SOURCE.read_bytes().hex(),
        metadata.version("mlx"),
        metadata.version("nanobind"),
        sysconfig.get_config_var("EXT_SUFFIX") or "",
        _compiler_version(cxx),
        _cpu_key(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def library_path(cxx: str) -> Path:
    """Where the built extension for this machine lives (it may not exist yet)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return _cache_root() / build_key(cxx) / f"{MODULE}{suffix}"


def _vector_maths() -> list[str]:
    """glibc's SIMD maths library on x86-64 (noise_transform.cpp declares its functions)."""
    if platform.machine() in ("x86_64", "AMD64") and platform.libc_ver()[0] == "glibc":
        return ["-lmvec"]
    return []


def _command(cxx: str, output: Path) -> list[str]:
    nb, mlx_dir = _nanobind_dir(), _mlx_dir()
    python_include = sysconfig.get_paths()["include"]
    return [
        cxx,
        "-std=c++20",
        "-O3",
        "-march=native",
        "-fopenmp",
        # For noise_transform.cpp's vector maths; neither changes fastkernels.cpp's results.
        "-fno-math-errno",
        "-fno-builtin-sin",
        "-fno-builtin-cos",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-DNDEBUG",
        "-DNB_DOMAIN=mlx",
        f"-I{nb / 'include'}",
        f"-I{nb / 'ext' / 'robin_map' / 'include'}",
        f"-I{python_include}",
        f"-I{mlx_dir / 'include'}",
        str(SOURCE),
        str(NOISE_SOURCE),
        str(nb / "src" / "nb_combined.cpp"),
        f"-L{mlx_dir / 'lib'}",
        "-lmlx",
        *_vector_maths(),
        f"-Wl,-rpath,{mlx_dir / 'lib'}",
        "-o",
        str(output),
    ]


def build(*, force: bool = False) -> Path:
    """Build the extension for this machine if it is not cached yet; returns its path.

    Raises:
        KernelBuildError: not Linux, no compiler, nanobind missing, or the compiler failed
            (the message carries the compiler's last lines).
    """
    if not sys.platform.startswith("linux"):
        raise KernelBuildError("personal.kernels are for Linux CPUs; elsewhere MLX's own ops run")
    cxx = compiler()
    if cxx is None:
        raise KernelBuildError(
            "no C++ compiler found; install one (Debian/Ubuntu: `apt-get install g++`; "
            "make install does) or set CXX"
        )
    target = library_path(cxx)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / ".build.lock"):
        if target.exists() and not force:
            return target  # another process built it while we waited
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            result = subprocess.run(
                _command(cxx, temp), capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                tail = "\n".join((result.stderr or result.stdout).splitlines()[-20:])
                raise KernelBuildError(f"compiling personal.kernels failed:\n{tail}")
            os.replace(temp, target)
            fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)
    return target
