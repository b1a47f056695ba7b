// The one table of the codes shared by C++ and Python: instruction sets, operations,
// algorithms and element types. module.cpp exports each list to Python as a dict
// (_core.ISA_CODES, _core.OP_CODES, _core.ALGO_CODES, _core.DTYPE_CODES); nothing else
// restates a number.
//
// X(python_name, Enumerator, code). Codes are dense from 0; ISAs are listed worst to
// best (the Python layer picks the last one the CPU runs).
#pragma once

#define TP_ISA_LIST(X) \
  X(scalar, kScalar, 0)  \
  X(avx2, kAvx2, 1)      \
  X(avx512, kAvx512, 2)  \
  X(neon, kNeon, 3)

#define TP_OP_LIST(X)            \
  X(softmax, kSoftmax, 0)        \
  X(log_softmax, kLogSoftmax, 1) \
  X(logsumexp, kLogSumExp, 2)

#define TP_ALGO_LIST(X)                          \
  X(two_pass, kTwoPass, 0)                       \
  X(three_pass_reload, kThreePassReload, 1)      \
  X(three_pass_recompute, kThreePassRecompute, 2) \
  X(online, kOnline, 3)

// Element types of the softmax family's x and y: float16 and bfloat16 are stored as
// such and computed in float32 (half.h); Python passes them as uint16 views.
#define TP_DTYPE_LIST(X)  \
  X(float32, kFloat32, 0) \
  X(float64, kFloat64, 1) \
  X(float16, kFloat16, 2) \
  X(bfloat16, kBfloat16, 3)

namespace tp {

#define TP_ENUMERATOR(name, Enumerator, code) Enumerator = code,
#define TP_COUNT(name, Enumerator, code) +1
enum class Isa { TP_ISA_LIST(TP_ENUMERATOR) };
enum class Op { TP_OP_LIST(TP_ENUMERATOR) };
enum class Algo { TP_ALGO_LIST(TP_ENUMERATOR) };
enum class Dtype { TP_DTYPE_LIST(TP_ENUMERATOR) };
constexpr int kIsaCount = 0 TP_ISA_LIST(TP_COUNT);
constexpr int kOpCount = 0 TP_OP_LIST(TP_COUNT);
constexpr int kAlgoCount = 0 TP_ALGO_LIST(TP_COUNT);
#undef TP_COUNT
#undef TP_ENUMERATOR

}  // namespace tp
