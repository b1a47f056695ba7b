// The kernels of twopass._core as plain C function pointers, for code built outside the
// extension: the XLA FFI handlers of twopass.jax (csrc/jax_ffi.cpp, compiled on first use
// against jaxlib's headers, src/twopass/jax/_build.py) and twopass.torch's autograd node
// (csrc/torch_autograd_node.cpp, likewise against libtorch's). `_core.c_api()` returns the
// address of the table. Only C types cross it, so the two sides need no common compiler
// or C++ runtime. Bump the version on any change of the table.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define TP_C_API_VERSION 3

#ifdef __cplusplus
extern "C" {
#endif

// Each call returns 0, or -1 with a NUL-terminated message in err (err_len bytes at most).
// The arguments are those of _core.run_ptr, backward_ptr and cross_entropy_ptr
// (csrc/module.cpp); cross_entropy also takes float16 (half 1) and bfloat16 (half 2)
// logits and gradient with bytes 2, its weight and loss then float32. None of them
// touches Python: they run on any thread, without the GIL.
typedef struct tp_c_api {
  int version;
  int (*run)(int op, int algo, int isa, int bytes, const void* x, void* y, int64_t outer, int64_t n, int64_t inner,
             int64_t xs_outer, int64_t xs_n, int64_t ys_outer, int64_t ys_n, int threads, int stream, int bf16,
             char* err, size_t err_len);
  // (Since version 3, `inner`: softmax and log_softmax over the middle axis of C-contiguous
  // (rows, n, inner) blocks when > 1; 1 for rows.)
  int (*backward)(int op, int isa, int bytes, const void* g, const void* y, const void* lse, void* gx, int64_t rows,
                  int64_t n, int64_t gs, int64_t ys, int64_t xs, int64_t inner, int threads, int stream, int bf16,
                  char* err, size_t err_len);
  int (*cross_entropy)(int isa, int algo, int bytes, int half, const void* x, int64_t rows, int64_t n, int64_t xs,
                       const int64_t* target, const void* weight, int64_t ignore_index, double eps, double zc,
                       double cap, int reduction, void* grad, int64_t gs, void* loss, void* zl, void* lse,
                       int threads, int stream, char* err, size_t err_len);
  // Since version 2, for twopass.torch's autograd node (src/twopass/torch/_node.py):
  // twopass.torch's one-call paths on raw memory (csrc/torch_eager.cpp, torch_rows and
  // torch_backward), with their algorithm rule, on torch's OpenMP team. op: softmax,
  // log_softmax (y like x) or logsumexp (y one value per row); the backward's arguments
  // are those of `backward` for contiguous rows. They return 1 where those paths would
  // not take the call, and with a null y (gx) only say whether they would. They do not
  // touch the GIL.
  int (*torch_rows)(int op, int bytes, int bf16, const void* x, void* y, int64_t rows, int64_t n, int threads,
                    char* err, size_t err_len);
  int (*torch_backward)(int op, int bytes, int bf16, const void* g, const void* y, const void* lse, void* gx,
                        int64_t rows, int64_t n, int threads, char* err, size_t err_len);
} tp_c_api;

#ifdef __cplusplus
}
#endif
