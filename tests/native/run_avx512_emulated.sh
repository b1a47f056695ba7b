#!/usr/bin/env bash
# Run tests/native/kernel_check.cpp over the AVX-512 kernels (csrc/kernels/simd/vec_avx512.h)
# with the intrinsics emulated in C++ (tests/native/avx512_emulation.h), on any x86-64 or
# other CPU. The emulation is injected from here (-include), the library code does not
# name it: TP_AVX512_EMULATE only tells vec_avx512.h to skip <immintrin.h>.
set -euo pipefail
cd "$(dirname "$0")/../.."
# SANITIZE=1: the same check built with AddressSanitizer (CI runs both).
out=build/avx512-emulated-check${SANITIZE:+-asan}
mkdir -p "$out"
CXX=${CXX:-g++}
flags="-O2 -std=c++17 -pthread${SANITIZE:+ -fsanitize=address -fno-omit-frame-pointer}"
kernels="softmax_passes cross_entropy_rows softmax_backward table"  # csrc/kernels/*.cpp: once per ISA
emulate="-DTP_AVX512_EMULATE -include tests/native/avx512_emulation.h"
for k in $kernels; do
  $CXX $flags -DTP_ISA_SCALAR -c "csrc/kernels/$k.cpp" -o "$out/scalar_$k.o"
  $CXX $flags -DTP_ISA_AVX512 $emulate -c "csrc/kernels/$k.cpp" -o "$out/avx512_$k.o"
  $CXX $flags -DTP_ISA_AVX2 -mavx2 -mfma -mf16c -c "csrc/kernels/$k.cpp" -o "$out/avx2_$k.o"
done
# The ISA-independent sources; TP_AVX512_EMULATE makes dispatch.cpp report AVX-512 as supported.
$CXX $flags -DTP_AVX512_EMULATE tests/native/kernel_check.cpp csrc/dispatch.cpp csrc/softmax.cpp csrc/kernel_shared.cpp \
  csrc/cross_entropy.cpp csrc/softmax_backward.cpp csrc/thread_pool.cpp "$out"/scalar_*.o "$out"/avx512_*.o "$out"/avx2_*.o -o "$out/kernel_check"
"$out/kernel_check"
