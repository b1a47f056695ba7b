"""The XLA FFI handlers of twopass.jax: compiled on first use, cached, registered.

The handlers (jax_ffi.cpp, next to this file) include jaxlib's FFI headers
(`jax.ffi.include_dir()`), so they cannot be built with the extension without making
jaxlib a build requirement of twopass. Instead the first call of a `twopass.jax`
function compiles them with the system's C++ compiler (`$CXX`, else c++, g++ or
clang++; a few seconds) into a per-user cache, keyed by the sources and the jaxlib
version, and later processes load the cached library. The handlers call the
kernels of `twopass._core` through its C table (c_api.h, `_core.c_api()`), which they
receive at load time: no kernel is compiled twice, and the shim only depends on the C
ABI of the table, checked by its version.

The cache is `$TWOPASS_CACHE_DIR`, else `$XDG_CACHE_HOME/twopass`, else
`~/.cache/twopass`. `$TWOPASS_JAX_FFI` may name a prebuilt library instead (built by
`python -m twopass.jax OUTPUT` on a machine with a compiler and the same jaxlib).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax

from .. import __version__, _core

_HERE = Path(__file__).resolve().parent
_SOURCES = (_HERE / "jax_ffi.cpp", _HERE / "c_api.h")
# XLA custom-call target names, and the library symbol each one's handler is.
TARGETS = {
    "twopass_softmax": "tp_jax_softmax",
    "twopass_softmax_backward": "tp_jax_softmax_backward",
    "twopass_logsumexp_backward": "tp_jax_logsumexp_backward",
    "twopass_cross_entropy": "tp_jax_cross_entropy",
    "twopass_cross_entropy_grad": "tp_jax_cross_entropy_grad",
}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def cache_dir() -> Path:
    base = os.environ.get("TWOPASS_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "twopass"


def compiler() -> list[str]:
    """The C++ compiler command: $CXX, else the first of c++, g++, clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shlex.split(cxx)
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise RuntimeError(
        "twopass.jax compiles its XLA FFI handlers once, on first use, and needs a C++17 compiler for it: "
        "none found (set CXX, or install g++ or clang++). Alternatively point TWOPASS_JAX_FFI at a library "
        "built by `python -m twopass.jax OUTPUT` on a machine with a compiler and the same jaxlib."
    )


def _jaxlib_version() -> str:
    import jaxlib

    return getattr(jaxlib, "__version__", None) or jaxlib.version.__version__


def command(output: Path) -> list[str]:
    """The compile command (also what a user runs by hand for TWOPASS_JAX_FFI)."""
    return [
        *compiler(),
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-w",  # jaxlib's headers warn under some compilers; nothing to act on here
        f"-I{jax.ffi.include_dir()}",
        f"-I{_HERE}",
        str(_SOURCES[0]),
        "-o",
        str(output),
    ]


def library_path() -> Path:
    """Where the cached library for these sources and this jaxlib lives (not keyed by the
    compiler: a library built once keeps loading without one)."""
    h = hashlib.sha256()
    for src in _SOURCES:
        h.update(src.read_bytes())
    h.update(_jaxlib_version().encode())
    return cache_dir() / f"jax_ffi-{__version__}-jaxlib{_jaxlib_version()}-{h.hexdigest()[:16]}.so"


def build(path: Path) -> Path:
    """Compile the handlers into `path` (atomically: concurrent first uses are safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        cmd = command(Path(tmp))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(
                f"twopass.jax: compiling the XLA FFI handlers failed ({shlex.join(cmd)}):\n{r.stderr[-4000:]}"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load() -> ctypes.CDLL:
    """The handler library, built if needed, tied to _core's table and registered with
    XLA (once per process)."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        given = os.environ.get("TWOPASS_JAX_FFI")
        path = Path(given) if given else library_path()
        if not given and not path.exists():
            build(path)
        lib = ctypes.CDLL(str(path))
        lib.tp_jax_init.argtypes = [ctypes.c_void_p]
        lib.tp_jax_init.restype = ctypes.c_int
        if lib.tp_jax_init(_core.c_api()) != 0:
            raise RuntimeError(f"twopass.jax: {path} was built for another version of twopass's C table")
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        _lib = lib
        return lib
