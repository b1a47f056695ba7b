"""Where a long row's logsumexp loses accuracy on a GPU: the row of tests/_triton_util.py's
CUDA_LARGE (1 x 2^24, N(0, 16), float32) through twopass.triton's logsumexp with the
default settings and with others (chunk sizes, chunks per row), torch's, and the error of
the exp the kernels use (tl.exp2 of x * log2(e)) element by element, all against float64.

    python tools/gpu_lse_accuracy.py [N]

Prints lse - reference (float64) per variant, and the exp's mean and largest relative
error; a mean far from zero is a bias that no summation order removes. Needs a CUDA device.
"""

from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

import twopass.triton as K


@triton.jit
def _exp_kernel(X, Y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + i, mask=i < n)
    tl.store(Y + i, tl.exp2(x * 1.4426950408889634), mask=i < n)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 24
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: under TRITON_INTERPRET=1
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn((1, n), generator=gen, dtype=torch.float64) * 4
    x = x64.float().to(dev)
    ref = torch.logsumexp(x.double().cpu(), -1).item()
    print(f"reference (float64) {ref:.9f}")
    variants = {
        "default": None,
        "k_max 64": {"k_max": 64},
        "k_max 8": {"k_max": 8},
        "chunk 16K": {"chunk_min": 16384, "chunk_max": 16384, "k_max": 1024},
        "tile 2048, 4 warps": {"split_tile_elems": 2048, "split_warps": 4},
        "k_max 1 (one program)": {"k_max": 1},
    }
    for name, cfg in variants.items():
        try:
            got = K._logsumexp_forward(x, -1, cfg=cfg).item()
            print(f"twopass {name:22} {got:.9f}  err {got - ref:+.3e}")
        except Exception as e:  # a setting the launcher refuses: say so, go on
            print(f"twopass {name:22} {type(e).__name__}: {e}")
    t = torch.logsumexp(x, -1).item()
    print(f"torch {'':24} {t:.9f}  err {t - ref:+.3e}")
    y = torch.empty_like(x)
    _exp_kernel[(triton.cdiv(n, 1024),)](x, y, n, BLOCK=1024)
    e64 = torch.exp(x.double())
    rel = ((y.double() - e64) / e64).cpu()
    print(f"tl.exp2(x*log2e) relative error: mean {rel.mean().item():+.3e}, max |.| {rel.abs().max().item():.3e}")
    w = (e64 / e64.sum()).cpu()  # the mass-weighted mean: what the sum sees
    print(f"  weighted by exp(x): {(rel * w).sum().item():+.3e}")
    te = torch.exp(x).double()
    rel_t = ((te - e64) / e64).cpu()
    print(f"torch.exp relative error: mean {rel_t.mean().item():+.3e}, max |.| {rel_t.abs().max().item():.3e}")


if __name__ == "__main__":
    main()
