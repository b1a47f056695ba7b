#!/usr/bin/env bash
# Run tests/native/kernel_check.cpp over simd.h's AVX-512 code with the intrinsics
# emulated in C++ (tests/native/avx512_emulation.h), on any x86-64 or other CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
# SANITIZE=1: the same check built with AddressSanitizer (CI runs both).
out=build/avx512-emulated-check${SANITIZE:+-asan}
mkdir -p "$out"
CXX=${CXX:-g++}
flags="-O2 -std=c++17 -pthread${SANITIZE:+ -fsanitize=address -fno-omit-frame-pointer}"
$CXX $flags -DTP_ISA_SCALAR -c csrc/kernels.cpp -o "$out/k_scalar.o"
$CXX $flags -DTP_ISA_AVX512 -DTP_AVX512_EMULATE -c csrc/kernels.cpp -o "$out/k_avx512.o"
$CXX $flags -DTP_ISA_AVX2 -mavx2 -mfma -c csrc/kernels.cpp -o "$out/k_avx2.o"
$CXX $flags -DTP_AVX512_EMULATE tests/native/kernel_check.cpp csrc/driver.cpp csrc/cross_entropy.cpp "$out"/k_*.o -o "$out/kernel_check"
"$out/kernel_check"
