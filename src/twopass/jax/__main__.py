"""python -m twopass.jax [OUTPUT]: build twopass.jax's XLA FFI handlers (into the cache,
or OUTPUT, for TWOPASS_JAX_FFI) and print the library's path."""

import sys
from pathlib import Path

from ._build import build, library_path

print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else library_path()))
