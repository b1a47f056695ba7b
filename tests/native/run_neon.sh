#!/usr/bin/env bash
# Build the C++ core for AArch64 (scalar + NEON) with Debian's cross compiler and run
# tests/native/kernel_check.cpp under qemu-aarch64. Needs: g++-aarch64-linux-gnu qemu-user.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/neon-check
mkdir -p "$out"
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
flags="-O2 -std=c++17 -static -pthread"
kernels="softmax_passes cross_entropy_rows softmax_backward table"  # csrc/kernels/*.cpp: once per ISA
for k in $kernels; do
  $CXX $flags -DTP_ISA_SCALAR -c "csrc/kernels/$k.cpp" -o "$out/scalar_$k.o"
  $CXX $flags -DTP_ISA_NEON -c "csrc/kernels/$k.cpp" -o "$out/neon_$k.o"
done
$CXX $flags tests/native/kernel_check.cpp csrc/dispatch.cpp csrc/softmax.cpp csrc/kernel_shared.cpp csrc/cross_entropy.cpp csrc/softmax_backward.cpp csrc/thread_pool.cpp \
  "$out"/scalar_*.o "$out"/neon_*.o -o "$out/kernel_check"
qemu-aarch64 "$out/kernel_check"
