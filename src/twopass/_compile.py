"""Small C++ shims compiled on first use into a per-user cache.

Some glue includes a framework's own C++ headers: twopass.jax's XLA FFI handlers
(jaxlib's), twopass.torch's autograd node (libtorch's). Building it with the extension
would make that framework a build requirement of twopass, so it is compiled the first
time it is needed, with the system's C++ compiler, into a cache keyed by its sources
and the framework's version; later processes load the cached library.

The cache is `$TWOPASS_CACHE_DIR`, else `$XDG_CACHE_HOME/twopass`, else
`~/.cache/twopass`. The compiler is `$CXX`, else the first of c++, g++, clang++.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("TWOPASS_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "twopass"


def compiler(why: str) -> list[str]:
    """The C++ compiler command: $CXX, else the first of c++, g++, clang++ on PATH.
    `why` completes the error when there is none ("twopass.jax compiles ... and")."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shlex.split(cxx)
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise RuntimeError(f"{why} needs a C++ compiler for it: none found (set CXX, or install g++ or clang++).")


def keyed_path(stem: str, sources: Iterable[Path], *keys: str) -> Path:
    """The cache path for a library built from `sources` under `keys` (versions): any
    change of either names another file. Not keyed by the compiler: a library built once
    keeps loading without one."""
    h = hashlib.sha256()
    for src in sources:
        h.update(src.read_bytes())
    for k in keys:
        h.update(k.encode())
    return cache_dir() / f"{stem}-{'-'.join(keys)}-{h.hexdigest()[:16]}.so"


def build(path: Path, command: list[str], what: str) -> Path:
    """Run `command` (whose output file is its last argument, replaced here by a temporary
    file) and move the result to `path` atomically: concurrent first uses are safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        cmd = [*command[:-1], tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{what}: compiling failed ({shlex.join(cmd)}):\n{r.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
