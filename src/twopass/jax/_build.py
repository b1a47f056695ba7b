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

The cache and the compiler are _compile.py's. `$TWOPASS_JAX_FFI` may name a prebuilt library instead (built by
`python -m twopass.jax OUTPUT` on a machine with a compiler and the same jaxlib).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import jax

from .. import __version__, _compile, _core

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
cache_dir = _compile.cache_dir


def compiler() -> list[str]:
    """The C++ compiler command (_compile.compiler)."""
    return _compile.compiler(
        "twopass.jax compiles its XLA FFI handlers once, on first use (or point TWOPASS_JAX_FFI at a library "
        "built by `python -m twopass.jax OUTPUT` on a machine with a compiler and the same jaxlib), and"
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
    """Where the cached library for these sources and this jaxlib lives."""
    return _compile.keyed_path("jax_ffi", _SOURCES, __version__, f"jaxlib{_jaxlib_version()}")


def build(path: Path) -> Path:
    """Compile the handlers into `path` (atomically: concurrent first uses are safe)."""
    return _compile.build(path, command(path), "twopass.jax's XLA FFI handlers")


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
