"""python -m twopass {info, bench, accuracy, verify}"""

from __future__ import annotations

import sys


def _info(argv: list[str]) -> int:
    import json

    import twopass

    info = twopass.info()
    if "--json" in argv:
        print(json.dumps(info, indent=1))
        return 0
    caches = ", ".join(f"{k} {v // 1024} KiB" for k, v in info["caches"].items())
    print(f"twopass {info['versions']['twopass']}")
    print(f"CPU:          {info['cpu']} ({info['machine']})")
    print(f"features:     {' '.join(info['cpu_features'])}")
    print(f"ISA:          {info['isa']}" + (" (forced by TWOPASS_ISA)" if info["isa_forced"] else ""))
    print(f"available:    {', '.join(info['isa_supported'])}")
    if info["avx2_half_width"]:
        print("              (256-bit AVX instructions run as two 128-bit halves here)")
    if info["avx512_half_width"]:
        print("              (512-bit AVX-512 instructions run as two 256-bit halves here)")
    print(f"caches:       {caches}")
    print(f"threads:      {info['threads']}")
    print(f"prefetch:     {info['prefetch_bytes']} bytes ahead")
    print(f"spin:         {info['spin_us']} us (idle worker threads, before they sleep)")
    bf16_instr = info["avx512_bf16"] and info["isa"] == "avx512"
    print(f"bfloat16:     {'AVX512-BF16 conversion' if bf16_instr else 'integer rounding'}")
    if info["torch_node"]:
        print(f"torch node:   {info['torch_node']}")
    print("versions:     " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("  info      CPU features, chosen ISA, caches, threads, versions (--json)")
        print("  bench     the benchmark (--quick for a one-minute run; --help for more)")
        print("  accuracy  the accuracy report against an extended-precision reference")
        print("  verify    --device cuda: the GPU kernels' checks and bars on a GPU, in one command")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        return _info(rest)
    if cmd == "bench":
        from . import bench

        return bench.main(rest)
    if cmd == "accuracy":
        from . import accuracy

        return accuracy.main(rest)
    if cmd == "verify":
        from . import verify

        return verify.main(rest)
    print(f"unknown command {cmd!r}; try: python -m twopass --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
