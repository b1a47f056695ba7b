// When an output is written with streaming (non-temporal) stores: the one rule, for the
// kernels and the driver alike.
//
// A streaming store writes a line straight to memory, with no read-for-ownership and
// without keeping it in the cache: on an output larger than the cache that saves a
// third of the traffic of a pass that reads x and writes y (R + W instead of R + 2W).
// It is a loss on anything read again soon (the line is gone from the cache), and it
// saves nothing on lines the pass itself has just read (no read-for-ownership to
// save). So a pass streams when
//   - the caller asks for it (`stream`: the Python layer asks when the output does not
//     fit the cache), and
//   - it writes the final output, which no later pass reads, and not in place.
// Everything else takes normal stores, streaming asked or not:
//   - kReadAgain: pass 2 of the three-pass reload (exp(x - max), which pass 3 reads
//     back), and the cross-entropy's scratch rows (the softmax row the gradient is
//     computed from; a bfloat16 gradient before it is narrowed);
//   - kInPlace: pass 3 of the three-pass reload, rescaling pass 2's output where it
//     lies (whatever part is still in cache is then free; measured on a 64 MB row:
//     streaming passes 2 and 3, 1.35x slower; streaming pass 3 only, 1.1x slower),
//     and a cross-entropy gradient written over the logits.
// The mechanics (aligned addresses, the closing fence) are in kernels/loops.h,
// write_row.
#pragma once

namespace tp {

enum class Reuse { kFinalOutput, kReadAgain, kInPlace };

constexpr bool use_streaming_stores(bool asked, Reuse reuse) { return asked && reuse == Reuse::kFinalOutput; }

}  // namespace tp
