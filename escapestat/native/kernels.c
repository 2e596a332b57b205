/* escapestat's CPU kernels: the grokking MLP's loss and gradients and its accuracy, the
 * transformer's attention (forward and backward), and AdamW, per replica.
 *
 * Compiled on first use by escapestat/native.py (gcc or clang, -O3 -march=native, OpenMP
 * when the compiler has it) and called through ctypes. Each replica is independent, so the
 * replicas are shared out over OpenMP threads; a replica's whole forward and backward runs
 * in that thread's cache (design §5: the batched-op route streams every activation through
 * memory several times per step). The formulas are those of mlp_ensemble.py and
 * optimizers.AdamW (and transformer_ensemble.py); float and double are the same source
 * (kernel_body.h and attention_body.h, each included twice).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
/* Flush denormals to zero inside the kernels (a saturated softmax's tiny probabilities
 * would otherwise slow every product with them); the caller's mode is restored. */
#define FP_ENTER(saved) do { (saved) = _mm_getcsr(); _mm_setcsr((saved) | 0x8040); } while (0)
#define FP_LEAVE(saved) _mm_setcsr(saved)
#else
#define FP_ENTER(saved) ((void)((saved) = 0))
#define FP_LEAVE(saved) ((void)(saved))
#endif

#define INLINE static inline __attribute__((always_inline))

/* OpenMP pragmas that vanish in a build without OpenMP (one thread). */
#ifdef _OPENMP
#define OMP(directive) _Pragma(#directive)
#else
#define OMP(directive)
#endif

/* 64-byte vectors (one AVX-512 register; two AVX2 or four NEON ones elsewhere). */
typedef float vf32 __attribute__((vector_size(64)));
typedef float vf32u __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi32 __attribute__((vector_size(64)));
typedef double vf64 __attribute__((vector_size(64)));
typedef double vf64u __attribute__((vector_size(64), aligned(8)));
typedef int64_t vi64 __attribute__((vector_size(64)));

int escapestat_abi_version(void) { return 3; }

int escapestat_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* e^x for x ≤ 0 (Cephes' expf: range reduction by ln 2, degree-6 polynomial, ≈ 1 ulp),
 * clamped below at -87 so that 2^n stays a normal float; NaN stays NaN. */
INLINE vf32 vexp_f32(vf32 x) {
    const vf32 low = (vf32){0} - 87.0f;
    vi32 below = x < low;
    x = (vf32)(((vi32)low & below) | ((vi32)x & ~below));
    vf32 y = x * 1.44269504088896341f + 0.5f;
    vi32 n = __builtin_convertvector(y, vi32);
    vf32 nf = __builtin_convertvector(n, vf32);
    vi32 over = nf > y;          /* truncation rounded up: floor is one less */
    nf += __builtin_convertvector(over, vf32);
    n += over;
    vf32 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vf32 p = (vf32){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * (vf32)((n + 127) << 23);
}

/* Double precision serves exactness checks, not speed: the C library's exp per lane. */
INLINE vf64 vexp_f64(vf64 x) {
    vf64 out;
    for (int q = 0; q < 8; q++) out[q] = exp(x[q]);
    return out;
}

#define T float
#define V vf32
#define VU vf32u
#define VI vi32
#define VL 16
#define SFX f32
#define VEXP vexp_f32
#define EXP expf
#define LOG1P log1pf
#define LOG logf
#define SQRT sqrtf
#include "kernel_body.h"
#include "attention_body.h"
#undef T
#undef V
#undef VU
#undef VI
#undef VL
#undef SFX
#undef VEXP
#undef EXP
#undef LOG1P
#undef LOG
#undef SQRT

#define T double
#define V vf64
#define VU vf64u
#define VI vi64
#define VL 8
#define SFX f64
#define VEXP vexp_f64
#define EXP exp
#define LOG1P log1p
#define LOG log
#define SQRT sqrt
#include "kernel_body.h"
#include "attention_body.h"
