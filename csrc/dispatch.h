// Which ISA's kernels run: what the CPU supports, what this build has, and the kernel
// table of an ISA. The codes themselves are in codes.h.
#pragma once

#include "codes.h"
#include "kernel_api.h"

namespace tp {

bool isa_supported(Isa isa);  // the CPU and OS can run it
bool isa_compiled(Isa isa);   // this build has it
// Lanes of one panel call (columns of a non-last axis per group); 1 if not compiled.
// dtype_bytes 2 (float16, bfloat16): those of float32, their compute type.
int panel_lanes(Isa isa, int dtype_bytes);
// The kernel table of an ISA the CPU supports (else std::invalid_argument).
const KernelTable& kernels(Isa isa);
// bfloat16 on AVX-512 by AVX512-BF16's conversion: this build has it and the CPU runs it.
bool avx512_bf16_supported();
// Whether the AVX-512 table takes those bfloat16 kernels (only if supported; set from
// Python: TWOPASS_AVX512_BF16, default on).
extern bool use_avx512_bf16;

}  // namespace tp
