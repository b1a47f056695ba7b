// CPU feature detection and the kernel table per ISA.
#include "dispatch.h"

#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#define TP_HAVE_X86 1
#else
#define TP_HAVE_X86 0
#endif
#if defined(__aarch64__)
#define TP_HAVE_ARM64 1
#else
#define TP_HAVE_ARM64 0
#endif

namespace tp {
namespace {

// The ISAs CMakeLists.txt compiles on this architecture.
bool compiled(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2:
    case Isa::kAvx512: return TP_HAVE_X86;
    case Isa::kNeon: return TP_HAVE_ARM64;
    default: return false;
  }
}

// The table of a compiled ISA. Only for an ISA the CPU supports: building an ISA's table
// runs code compiled for it (an AVX-512 machine's static initialisation would otherwise
// fault on an AVX2-only CPU with an illegal instruction).
const KernelTable& table_for(Isa isa) {
  switch (isa) {
#if TP_HAVE_X86
    case Isa::kAvx2: return tp_avx2::table();
    case Isa::kAvx512: return tp_avx512::table();
#endif
#if TP_HAVE_ARM64
    case Isa::kNeon: return tp_neon::table();
#endif
    default: return tp_scalar::table();
  }
}

#if TP_HAVE_X86 && defined(TP_HAVE_AVX512_BF16)
// The AVX-512 table with the bfloat16 kernels of the AVX512-BF16 build.
const KernelTable& avx512_with_bf16() {
  static const KernelTable t = [] {
    KernelTable m = tp_avx512::table();
    const KernelTable& b = tp_avx512bf16::table();
    m.bf16s = b.bf16s;
    m.ce_bf16 = b.ce_bf16;
    m.bwd_bf16 = b.bwd_bf16;
    return m;
  }();
  return t;
}
#endif

}  // namespace

bool avx512_bf16_supported() {
#if TP_HAVE_X86 && defined(TP_HAVE_AVX512_BF16)
  return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

bool use_avx512_bf16 = false;

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
#if TP_HAVE_X86
    // libgcc's checks include the OS's support for the wider registers (XGETBV).
    // F16C: the float16 kernels' conversions (every AVX2 CPU has it; checked all the same).
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#if defined(TP_AVX512_EMULATE)  // a check build whose AVX-512 intrinsics are emulated in C++
    case Isa::kAvx512: return true;
#else
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f");
#endif
#endif
#if TP_HAVE_ARM64
    case Isa::kNeon: return true;  // Advanced SIMD is part of every AArch64 CPU
#endif
    default: return false;
  }
}

bool isa_compiled(Isa isa) { return compiled(isa); }

int prefetch_bytes = 2048;

int panel_lanes(Isa isa, int dtype_bytes) {
  if (!compiled(isa) || !isa_supported(isa)) return 1;
  const KernelTable& t = table_for(isa);
  return dtype_bytes == 8 ? t.lanes_f64 : t.lanes_f32;  // halves compute in float32
}

const KernelTable& kernels(Isa isa) {
  if (!compiled(isa) || !isa_supported(isa)) throw std::invalid_argument("twopass: instruction set not available on this CPU");
#if TP_HAVE_X86 && defined(TP_HAVE_AVX512_BF16)
  if (isa == Isa::kAvx512 && use_avx512_bf16) return avx512_with_bf16();
#endif
  return table_for(isa);
}

}  // namespace tp
