#!/usr/bin/env bash
# Build the C++ core for AArch64 (scalar + NEON) with Debian's cross compiler and run
# tests/native/kernel_check.cpp under qemu-aarch64. Needs: g++-aarch64-linux-gnu qemu-user.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/neon-check
mkdir -p "$out"
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
flags="-O2 -std=c++17 -static -pthread"
$CXX $flags -DTP_ISA_SCALAR -c csrc/kernels.cpp -o "$out/k_scalar.o"
$CXX $flags -DTP_ISA_NEON -c csrc/kernels.cpp -o "$out/k_neon.o"
$CXX $flags tests/native/kernel_check.cpp csrc/driver.cpp csrc/cross_entropy.cpp "$out/k_scalar.o" "$out/k_neon.o" -o "$out/kernel_check"
qemu-aarch64 "$out/kernel_check"
