"""twopass.torch's autograd node in C++ (torch_autograd_node.cpp, next to this file):
built on first use, cached, loaded.

The eager CPU path applies `_eager.softmax_apply` / `logsumexp_apply` when x needs a
gradient. These start as the Python autograd Functions behind a first-call hook
(`_eager.py`): the first call loads the node from the cache of twopass/_compile.py, or,
when it is not there, compiles it in a background thread (~15 s: libtorch's headers) and
keeps the Python Functions until it is ready. Both run the same forward and backward
functions, so the results are the same bits either way; the node saves ~2.5 us of
Python machinery a call (see the README, twopass.torch against torch).

`TWOPASS_TORCH_NODE=0` keeps the Python Functions (no compiler is ever run);
`python -m twopass.torch._node` builds it ahead of use (a machine without a compiler can
then use a cache copied from one with the same torch and Python).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from .. import __version__, _compile

_SOURCE = Path(__file__).resolve().parent / "torch_autograd_node.cpp"
# _core's C table, installed beside twopass.jax's shim (CMakeLists.txt)
_C_API = Path(__file__).resolve().parent.parent / "jax" / "c_api.h"
_NAME = "_twopass_autograd_node"  # the module's PyInit_ name (the source's)
ENABLED = os.environ.get("TWOPASS_TORCH_NODE", "1") != "0"
_lock = threading.Lock()
_building: threading.Thread | None = None
node: ModuleType | None = None  # once loaded
error: BaseException | None = None  # why it could not be built or loaded, if so


def status() -> str:
    """Where the node stands in this process (twopass.info()'s ``torch_node``)."""
    if not ENABLED:
        return "off (TWOPASS_TORCH_NODE=0): autograd Functions"
    if node is not None:
        return f"loaded from {node.__file__}"
    if error is not None:
        return f"not built, autograd Functions: {str(error).splitlines()[0]}"
    if _building is not None:
        return "building (autograd Functions until it loads)"
    return "in the cache, loads on first use" if library_path().exists() else "builds on first use"


def library_path() -> Path:
    """The cached node for this source, twopass, torch and Python."""
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    return _compile.keyed_path("torch_node", (_SOURCE, _C_API), __version__, f"torch{torch.__version__}", py)


def command(output: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths  # (~1 s to import: only when building)

    lib = Path(torch.__file__).resolve().parent / "lib"
    return [
        *_compile.compiler("twopass.torch compiles its autograd node once, on first use, and"),
        "-O2",
        "-std=c++20",  # (what torch's own extensions build with)
        "-shared",
        "-fPIC",
        "-w",  # libtorch's headers warn under some compilers; nothing to act on here
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{p}" for p in include_paths()),
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{_C_API.parent}",
        str(_SOURCE),
        f"-L{lib}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-ltorch_python",
        f"-Wl,-rpath,{lib}",
        "-o",
        str(output),
    ]


def build(path: Path | None = None) -> Path:
    """Compile the node into `path` (the cache by default)."""
    path = path or library_path()
    return _compile.build(path, command(path), "twopass.torch's autograd node")


def _import(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(_NAME, str(path))
    spec = importlib.util.spec_from_file_location(_NAME, path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _build_and_load(on_load: Callable[[ModuleType], None]) -> None:
    global node, error
    try:
        path = library_path()
        if not path.exists():
            build(path)
        mod = _import(path)
        on_load(mod)
        node = mod
    except Exception as e:  # no compiler, a failed build: the Python Functions stay
        error = e


def start(on_load: Callable[[ModuleType], None], wait: bool = False) -> ModuleType | None:
    """Load the node and pass it to `on_load` (which initialises and installs it): at once
    from the cache, else after a build in a background thread (`wait`: in this one).
    Returns the node when it is loaded on return. Idempotent."""
    global _building
    with _lock:
        if node is not None or not ENABLED:
            return node
        if _building is None:
            cached = library_path().exists()
            if cached or wait:
                _build_and_load(on_load)
                return node
            _building = threading.Thread(target=_build_and_load, args=(on_load,), name="twopass-node", daemon=True)
            _building.start()
    if wait:
        _building.join()
    return node


if __name__ == "__main__":  # python -m twopass.torch._node: build into the cache, print the path
    print(build())
