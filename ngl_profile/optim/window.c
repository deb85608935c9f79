/* The Natural GaLore window's two passes on a CPU, as plain C (native.py builds and loads it).

   Why not inductor's loop: ATen's vector library has no vectorised float -> double conversion
   (at::vec::convert<double, 2, float, 1> falls back to a store, a scalar loop and a reload), so the
   compiled passes spend several cycles per window element where a streaming read takes a fraction
   of one. Here the conversion is the compiler's own vector conversion (GCC/Clang vector
   extensions, built for the machine it runs on), and each pass reads the window once.

   Both passes work on an arena of P windows (P x s x k, the slot index s in the middle; strides in
   elements, the innermost one 1), split into tasks of one window's CHUNK consecutive elements,
   spread over the threads. The order of every sum depends only on the shapes, never on the number
   of threads, so a result is the same whatever the thread count.

   gram:    out[p][j] = <c_pj, g_p> for every slot j: each product of two stored values is exact in
            double (float32, bfloat16 and int8 values have at most 24 significant bits), summed in
            double, in lanes of 8 per task, then the tasks in order; int8 by int8 in integers,
            exact, so the same numbers (gram_i8 says why).
   quantize: one int8 column and its scale from a float32 or bfloat16 g, byte for byte as
            natural._store's torch ops make them.
   combine: out[p][x] = sum_j w_pj c_pj[x], summed in double in slot order and rounded to
            float32 (to nearest even), then for a bfloat16 output to that (as torch rounds a
            float64 to bfloat16: through float32). */
#include <stdint.h>
#include <stdlib.h>
#include <float.h>
#include <math.h>
#include <string.h>

#define CHUNK 16384 /* elements of one window per task: 64 KiB of float32 per slot */

typedef double vd __attribute__((vector_size(64)));
typedef float vf __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint16_t vh __attribute__((vector_size(16)));
typedef int8_t vb __attribute__((vector_size(8)));

enum { F32 = 0, BF16 = 1, I8 = 2 };

/* every storage type is made float32 first (exactly: bfloat16 is a float32's top half, int8 is
   an integer of at most 7 bits), then double: each step one vector instruction */
static inline vf f32_of_f32(const void *p, int64_t i) {
    vf x;
    memcpy(&x, (const float *)p + i, sizeof x);
    return x;
}
#ifdef __AVX2__
/* GCC 12 makes scalar code of the generic conversions below from 8-bit and 16-bit vectors */
#include <immintrin.h>
static inline vf f32_of_bf16(const void *p, int64_t i) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return (vf)_mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline vf f32_of_i8(const void *p, int64_t i) {
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)p + i)));
    return (vf)_mm256_cvtepi32_ps(v);
}
#else
static inline vf f32_of_bf16(const void *p, int64_t i) {
    vh x;
    memcpy(&x, (const uint16_t *)p + i, sizeof x);
    vu u = __builtin_convertvector(x, vu) << 16;
    vf f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline vf f32_of_i8(const void *p, int64_t i) {
    vb x;
    memcpy(&x, (const int8_t *)p + i, sizeof x);
    return __builtin_convertvector(__builtin_convertvector(x, vi), vf);
}
#endif
#ifdef __AVX512F__
/* GCC 12 (which prefers 256-bit vectors on these cores) splits the generic 8-wide conversions
   between float and double into two halves and a merge: 4 instructions where 1 does */
static inline vd to_vd(vf x) { return (vd)_mm512_cvtps_pd((__m256)x); }
static inline vf to_vf(vd x) { return (vf)_mm512_cvtpd_ps((__m512d)x); }
static inline vd load_i8(const void *p, int64_t i) { /* int8 -> int32 -> double, both exact */
    return (vd)_mm512_cvtepi32_pd(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)p + i))));
}
#else
static inline vd to_vd(vf x) { return __builtin_convertvector(x, vd); }
static inline vf to_vf(vd x) { return __builtin_convertvector(x, vf); }
static inline vd load_i8(const void *p, int64_t i) { return to_vd(f32_of_i8(p, i)); }
#endif
static inline vd load_f32(const void *p, int64_t i) { return to_vd(f32_of_f32(p, i)); }
static inline vd load_bf16(const void *p, int64_t i) { return to_vd(f32_of_bf16(p, i)); }
static inline double one_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
static inline double one_bf16(const void *p, int64_t i) {
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline double one_i8(const void *p, int64_t i) { return ((const int8_t *)p)[i]; }

static inline double hsum(vd v) {
    double t = 0;
    for (int l = 0; l < 8; l++) t += v[l];
    return t;
}

static inline int64_t elem_bytes(int dtype) { return dtype == F32 ? 4 : dtype == BF16 ? 2 : 1; }

/* Every pass asks for the window's lines `pf` bytes ahead of its loads (0: none), once per 64 bytes
   of each row it reads: the hardware's prefetchers alone kept these multi-row reads at the rate of
   one plain stream, below what the memory delivers to several streams at once (native.py measures
   the distance where the passes run: window_passes.py). A prefetch never faults, also past the end
   of the arena, and changes no result. */
#define AHEAD(p, x, eb, pf) __builtin_prefetch((const char *)(p) + (x) * (eb) + (pf))
#define NEW_LINE(x, eb, pf) ((pf) && (((x) * (eb)) & 63) == 0)

/* The rows of a task are read R at a time against g (R = ceil(s / groups), groups =
   ceil(s / GRAM_MAX_ROWS)): with AVX-512, s = 10 is two groups of 5 (it was three of 4, the last
   repeating a row), so g is read twice from the cache and no row for nothing. A group is an always-inline function of a constant R, one
   copy per R (GRAM_TASK's switch), so its R accumulators stay in registers. The order of each
   row's sum does not depend on R: the same numbers for any grouping. At most 8 rows where
   AVX-512 has 32 vector registers (an accumulator of 8 doubles is one), 4 elsewhere (it is two of
   AVX2's 16: 8 would spill). */
#ifdef __AVX512F__
#define GRAM_MAX_ROWS 8
#else
#define GRAM_MAX_ROWS 4
#endif
#define GRAM_GROUP(NAME, LOAD, ONE)                                                             \
    static inline __attribute__((always_inline)) void NAME(                                     \
        const char *const *r, const int R, const char *g, int64_t lo, int64_t hi, int64_t eb,   \
        int64_t pf, double *part) {                                                             \
        vd a[GRAM_MAX_ROWS];                                                                    \
        for (int i = 0; i < R; i++) a[i] = (vd){0};                                             \
        int64_t x = lo;                                                                         \
        for (; x + 8 <= hi; x += 8) {                                                           \
            if (NEW_LINE(x, eb, pf)) {                                                          \
                for (int i = 0; i < R; i++) AHEAD(r[i], x, eb, pf);                             \
                AHEAD(g, x, eb, pf);                                                            \
            }                                                                                   \
            vd gv = LOAD(g, x);                                                                 \
            for (int i = 0; i < R; i++) a[i] += LOAD(r[i], x) * gv;                             \
        }                                                                                       \
        for (int i = 0; i < R; i++) {                                                           \
            double t = hsum(a[i]);                                                              \
            for (int64_t y = x; y < hi; y++) t += ONE(r[i], y) * ONE(g, y);                     \
            part[i] = t;                                                                        \
        }                                                                                       \
    }
GRAM_GROUP(group_f32, load_f32, one_f32)
GRAM_GROUP(group_bf16, load_bf16, one_bf16)

#ifdef __AVX512F__
#define GRAM_WIDE_CASES(GROUP)                                                                  \
    case 5: GROUP(r, 5, g, lo, hi, eb, pf, part + j0); break;                                   \
    case 6: GROUP(r, 6, g, lo, hi, eb, pf, part + j0); break;                                   \
    case 7: GROUP(r, 7, g, lo, hi, eb, pf, part + j0); break;                                   \
    case 8: GROUP(r, 8, g, lo, hi, eb, pf, part + j0); break;
#else
#define GRAM_WIDE_CASES(GROUP)
#endif

/* rows c_0 … c_{s-1} of one window against g over [lo, hi), in groups (see GRAM_GROUP) */
#define GRAM_TASK(NAME, GROUP)                                                                  \
    static void NAME(const char *w, int64_t ss, int64_t s, const char *g, int64_t lo,           \
                     int64_t hi, int64_t eb, int64_t pf, double *part) {                        \
        if (s <= 0) return; /* no rows (and no groups to divide by) */                          \
        int64_t groups = (s + GRAM_MAX_ROWS - 1) / GRAM_MAX_ROWS, R = (s + groups - 1) / groups; \
        for (int64_t j0 = 0; j0 < s; j0 += R) {                                                 \
            const char *r[GRAM_MAX_ROWS];                                                       \
            int n = (int)(s - j0 < R ? s - j0 : R);                                             \
            for (int i = 0; i < n; i++) r[i] = w + (j0 + i) * ss * eb;                          \
            switch (n) { /* n <= GRAM_MAX_ROWS */                                               \
            case 1: GROUP(r, 1, g, lo, hi, eb, pf, part + j0); break;                           \
            case 2: GROUP(r, 2, g, lo, hi, eb, pf, part + j0); break;                           \
            case 3: GROUP(r, 3, g, lo, hi, eb, pf, part + j0); break;                           \
            case 4: GROUP(r, 4, g, lo, hi, eb, pf, part + j0); break;                           \
            GRAM_WIDE_CASES(GROUP)                                                              \
            }                                                                                   \
        }                                                                                       \
    }
GRAM_TASK(gram_f32, group_f32)
GRAM_TASK(gram_bf16, group_bf16)

/* int8 rows against an int8 g, in integers: a product of two int8 is at most 128^2 = 2^14, so a
   task's CHUNK = 2^14 of them (ngl_gram's tasks) sum to at most 2^28, exact in int32, and the double sums of those
   are exact too: the same numbers as a double FMA per product, in a quarter of the instructions
   (one 16-bit multiply-add makes two products). The double path was compute-bound here: 3.7x a
   read of the int8 window (benchmarks/window_passes.py --storage int8, Intel Xeon 2 vCPUs). */
#if defined(__AVX512BW__)
#define I8_STEP 32
typedef __m512i vacc;
static inline vacc i8_dot(vacc a, const char *r, const char *g, int64_t x) {
    __m512i c = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(r + x)));
    __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(g + x)));
    return _mm512_add_epi32(a, _mm512_madd_epi16(c, v));
}
static inline int64_t i8_sum(vacc a) { return _mm512_reduce_add_epi32(a); }
#elif defined(__AVX2__)
#define I8_STEP 16
typedef __m256i vacc;
static inline vacc i8_dot(vacc a, const char *r, const char *g, int64_t x) {
    __m256i c = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(r + x)));
    __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(g + x)));
    return _mm256_add_epi32(a, _mm256_madd_epi16(c, v));
}
static inline int64_t i8_sum(vacc a) {
    int32_t l[8];
    memcpy(l, &a, sizeof l);
    int64_t t = 0;
    for (int i = 0; i < 8; i++) t += l[i];
    return t;
}
#else
#define I8_STEP 8
typedef int32_t vacc __attribute__((vector_size(32)));
static inline vacc i8_dot(vacc a, const char *r, const char *g, int64_t x) {
    vb c, v;
    memcpy(&c, r + x, sizeof c);
    memcpy(&v, g + x, sizeof v);
    return a + __builtin_convertvector(c, vi) * __builtin_convertvector(v, vi);
}
static inline int64_t i8_sum(vacc a) {
    int64_t t = 0;
    for (int i = 0; i < 8; i++) t += a[i];
    return t;
}
#endif
static inline __attribute__((always_inline)) void group_i8(const char *const *r, const int R, const char *g,
                                                          int64_t lo, int64_t hi, int64_t eb, int64_t pf,
                                                          double *part) {
    (void)eb;
    vacc a[GRAM_MAX_ROWS];
    memset(a, 0, sizeof a);
    int64_t x = lo;
    for (; x + I8_STEP <= hi; x += I8_STEP) {
        if (NEW_LINE(x, 1, pf)) {
            for (int i = 0; i < R; i++) AHEAD(r[i], x, 1, pf);
            AHEAD(g, x, 1, pf);
        }
        for (int i = 0; i < R; i++) a[i] = i8_dot(a[i], r[i], g, x);
    }
    for (int i = 0; i < R; i++) {
        int64_t t = i8_sum(a[i]);
        for (int64_t y = x; y < hi; y++) t += (int32_t)((const int8_t *)r[i])[y] * ((const int8_t *)g)[y];
        part[i] = (double)t;
    }
}
GRAM_TASK(gram_i8, group_i8)

/* Gram rows of P windows. cols: P x s x k (strides sp, ss); g: P x k (stride gp); int8 storage:
   cscale P x s (stride csp) and gscale P (stride gsp) scale the integer dot products; out: P x s;
   pf: the prefetch distance in bytes (AHEAD). Returns 0, or -1 if the per-task partial sums could not be allocated. */
int ngl_gram(int dtype, const void *cols, int64_t P, int64_t s, int64_t k, int64_t sp, int64_t ss,
             const void *g, int64_t gp, const float *cscale, int64_t csp, const float *gscale,
             int64_t gsp, double *out, int64_t pf, int threads) {
    int64_t nch = (k + CHUNK - 1) / CHUNK, tasks = P * nch, eb = elem_bytes(dtype);
    double *part = malloc(sizeof(double) * (size_t)(tasks > 0 ? tasks : 1) * (size_t)s);
    if (!part) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t p = t / nch, lo = (t % nch) * CHUNK, hi = lo + CHUNK < k ? lo + CHUNK : k;
        const char *w = (const char *)cols + p * sp * eb, *gv = (const char *)g + p * gp * eb;
        double *pt = part + t * s;
        if (dtype == F32) gram_f32(w, ss, s, gv, lo, hi, eb, pf, pt);
        else if (dtype == BF16) gram_bf16(w, ss, s, gv, lo, hi, eb, pf, pt);
        else gram_i8(w, ss, s, gv, lo, hi, eb, pf, pt);
    }
    for (int64_t p = 0; p < P; p++)
        for (int64_t j = 0; j < s; j++) {
            double t = 0;
            for (int64_t c = 0; c < nch; c++) t += part[(p * nch + c) * s + j];
            if (dtype == I8) t = t * (double)cscale[p * csp + j] * (double)gscale[p * gsp];
            out[p * s + j] = t;
        }
    free(part);
    return 0;
}

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch rounds float32 */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* a NaN stays one */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* to_bf16 of 8 lanes at once: the same integer rounding (torch's for every value but a NaN, which
   stays a NaN: torch's own NaN bits differ between its scalar and vector paths), then the low halves
   (a lane-by-lane loop of to_bf16 made a bfloat16 g~ cost 1.8x a float32 one) */
static inline void store_bf16(uint16_t *o, vf f) {
    vu u;
    memcpy(&u, &f, sizeof u);
    vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);
    vu r = (((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & ~nan) | (((u >> 16) | 0x40u) & nan);
#if defined(__AVX512VL__)
    _mm_storeu_si128((__m128i *)o, _mm256_cvtepi32_epi16((__m256i)r));
#elif defined(__AVX2__)
    __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32((__m256i)r, (__m256i)r), 0x08);
    _mm_storeu_si128((__m128i *)o, _mm256_castsi256_si128(p));
#else
    for (int l = 0; l < 8; l++) o[l] = (uint16_t)r[l];
#endif
}

#define COMBINE_TASK(NAME, LOAD, ONE)                                                           \
    static void NAME(const char *w, int64_t ss, int64_t s, const double *wt, int64_t lo,        \
                     int64_t hi, int64_t eb, int64_t pf, int out_bf16, void *out) {              \
        int64_t x = lo;                                                                          \
        for (; x + 8 <= hi; x += 8) {                                                            \
            if (NEW_LINE(x, eb, pf))                                                             \
                for (int64_t j = 0; j < s; j++) AHEAD(w + j * ss * eb, x, eb, pf);               \
            vd acc = LOAD(w, x) * wt[0];                                                         \
            for (int64_t j = 1; j < s; j++) acc += LOAD(w + j * ss * eb, x) * wt[j];            \
            vf f = to_vf(acc);                                                                   \
            if (out_bf16)                                                                        \
                store_bf16((uint16_t *)out + x, f);                                              \
            else                                                                                 \
                memcpy((float *)out + x, &f, sizeof f);                                          \
        }                                                                                        \
        for (; x < hi; x++) {                                                                    \
            double acc = ONE(w, x) * wt[0];                                                      \
            for (int64_t j = 1; j < s; j++) acc += ONE(w + j * ss * eb, x) * wt[j];             \
            if (out_bf16) ((uint16_t *)out)[x] = to_bf16((float)acc);                            \
            else ((float *)out)[x] = (float)acc;                                                 \
        }                                                                                        \
    }
COMBINE_TASK(combine_f32, load_f32, one_f32)
COMBINE_TASK(combine_bf16, load_bf16, one_bf16)
COMBINE_TASK(combine_i8, load_i8, one_i8)

/* g~ of P windows: out[p] = sum_j w[p][j] c_pj (out P x k, stride op; float32, or bfloat16 if
   out_bf16); w: P x s doubles (stride wp); int8 storage: cscale P x s (stride csp) is folded
   into w; pf: as for ngl_gram. Returns 0, or -1 if the folded weights could not be allocated. */
int ngl_combine(int dtype, int out_bf16, const void *cols, int64_t P, int64_t s, int64_t k,
                int64_t sp, int64_t ss, const float *cscale, int64_t csp, const double *w,
                int64_t wp, void *out, int64_t op, int64_t pf, int threads) {
    int64_t nch = (k + CHUNK - 1) / CHUNK, tasks = P * nch, eb = elem_bytes(dtype);
    int64_t ob = out_bf16 ? 2 : 4;
    double *wt = malloc(sizeof(double) * (size_t)(P > 0 ? P : 1) * (size_t)s);
    if (!wt) return -1;
    for (int64_t p = 0; p < P; p++)
        for (int64_t j = 0; j < s; j++)
            wt[p * s + j] = dtype == I8 ? w[p * wp + j] * (double)cscale[p * csp + j] : w[p * wp + j];
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t p = t / nch, lo = (t % nch) * CHUNK, hi = lo + CHUNK < k ? lo + CHUNK : k;
        const char *c = (const char *)cols + p * sp * eb;
        void *o = (char *)out + p * op * ob;
        if (dtype == F32) combine_f32(c, ss, s, wt + p * s, lo, hi, eb, pf, out_bf16, o);
        else if (dtype == BF16) combine_bf16(c, ss, s, wt + p * s, lo, hi, eb, pf, out_bf16, o);
        else combine_i8(c, ss, s, wt + p * s, lo, hi, eb, pf, out_bf16, o);
    }
    free(wt);
    return 0;
}

/* One int8 column of the window from a float32 or bfloat16 g of length k, as natural._store does it
   with torch ops: scale = max(max|g|, FLT_MIN) / 127 in float32, code = g / scale rounded to
   nearest even and clamped to +-127 (IEEE division and rounding: the same bytes). One read of g
   for its absmax, one for the codes, where the torch ops make five passes and three temporaries.
   Returns 0, or -1 without writing anything if g holds a NaN or an infinity. */
static inline float f32_at(const void *g, int64_t i) { return ((const float *)g)[i]; }
static inline float bf16_at(const void *g, int64_t i) { return (float)one_bf16(g, i); }

/* one function per input type: a type test inside the loops kept GCC from vectorising them */
#define QUANTIZE(NAME, AT)                                                                      \
    static int NAME(const void *g, int64_t k, int8_t *out, float *scale, int threads) {         \
        float amax = 0;                                                                          \
        int bad = 0;                                                                             \
        _Pragma("omp parallel for simd schedule(static) num_threads(threads) reduction(max : amax) reduction(| : bad)") \
        for (int64_t i = 0; i < k; i++) {                                                        \
            float a = fabsf(AT(g, i));                                                           \
            bad |= !(a <= FLT_MAX); /* NaN compares false */                                     \
            amax = a > amax ? a : amax;                                                          \
        }                                                                                        \
        if (bad) return -1;                                                                      \
        volatile float tiny = FLT_MIN; /* divided at run time, as torch does: under flush-to-zero */ \
        float sc = (amax > tiny ? amax : tiny) / 127.0f; /* FLT_MIN/127 is then 0 there too */    \
        _Pragma("omp parallel for simd schedule(static) num_threads(threads)")                   \
        for (int64_t i = 0; i < k; i++) {                                                        \
            float q = nearbyintf(AT(g, i) / sc);                                                 \
            out[i] = (int8_t)(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);                  \
        }                                                                                        \
        *scale = sc;                                                                             \
        return 0;                                                                                \
    }
QUANTIZE(quantize_f32, f32_at)
QUANTIZE(quantize_bf16, bf16_at)

int ngl_quantize(int dtype, const void *g, int64_t k, int8_t *out, float *scale, int threads) {
    return dtype == F32 ? quantize_f32(g, k, out, scale, threads) : quantize_bf16(g, k, out, scale, threads);
}
