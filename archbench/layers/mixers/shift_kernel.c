/* ShiftViT's partial shift on dense (B, C, H, W) or channels-last (B, H, W, C) images, one call
 * for the whole batch.
 *
 * Compiled at first use by archbench/layers/native.py (plain C, no torch headers) and called
 * from shift.py, as a Python extension module's function where Python's headers are there,
 * else through ctypes: the PyTorch-op form costs ~15 Python-level calls (views, copies,
 * fills), ~20 us on this project's CPU, as long as copying a whole 7x7 stage.
 *
 * Group k of g channels: 0 moves left (takes its right neighbour), 1 right, 2 up, 3 down;
 * reverse (the gradient) moves each the other way. Channels from 4g on are copied. Elements
 * are moved as bytes (es bytes each), so any dtype works; a zero is all bits zero (+0.0).
 * Every output element is written once; every input element is read once.
 *
 * Images are shared among PyTorch's OpenMP threads where a call has a megabyte or more
 * (native.py links the pragma to PyTorch's own runtime; built without OpenMP it is ignored
 * and the calling thread does all).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Keep the copy loops loops (compilers turn them back into memcpy calls otherwise: glibc's
 * memcpy uses `rep movsb` for long copies, which on AMD Zen runs at half speed or worse when
 * source and destination are misaligned to each other, as every shifted run here is), and
 * build them for AVX2 too, picked at load time where the CPU has it (GCC's function clones). */
#if defined(__clang__)
#define LOOP_KERNEL __attribute__((no_builtin("memcpy")))
#elif defined(__GNUC__) && defined(__x86_64__)
#define LOOP_KERNEL __attribute__((optimize("no-tree-loop-distribute-patterns"), target_clones("avx2", "default")))
#elif defined(__GNUC__)
#define LOOP_KERNEL __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define LOOP_KERNEL
#endif

/* dst = src & mask, byte by byte */
LOOP_KERNEL static void and_bytes(unsigned char *restrict dst, const unsigned char *restrict src,
                                  const unsigned char *restrict mask, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        dst[i] = src[i] & mask[i];
}

/* One direction group (g channels of `plane` bytes) whose value at byte i comes from byte
 * i + d of the group's block (d = +-1 element: along W, +-1 row: along H), in one pass: the
 * copy AND a mask whose bytes are 0 on the border the shift opens and 0xFF elsewhere, so the
 * border is written in the same vectorised loop (as a copy plus a zero store per row, the
 * g*H scattered stores cost half as much again as the copy on 7x7 maps). The mask covers
 * `chunk` channels: small maps go `chunk` channels a call (fewer, longer loops). The reads
 * run over a channel's end into its neighbour's values, which the mask zeroes; the block's
 * first (last) |d| bytes, whose source would lie outside the group, are border: zeroed, not
 * read. */
static void shift_group(const unsigned char *x, unsigned char *out, int64_t g, int64_t plane, int64_t d,
                        const unsigned char *mask, int64_t chunk) {
    const int64_t n = g * plane;
    for (int64_t lo = 0; lo < n; lo += chunk * plane) {
        const int64_t hi = lo + chunk * plane < n ? lo + chunk * plane : n;
        int64_t i0 = lo, i1 = hi;
        if (lo == 0 && d < 0) { memset(out, 0, (size_t)-d); i0 = -d; }
        if (hi == n && d > 0) { memset(out + n - d, 0, (size_t)d); i1 = n - d; }
        if (i1 > i0)
            and_bytes(out + i0, x + i0 + d, mask + (i0 - lo), i1 - i0);
    }
}

/* The four directions' border masks for maps of H x W elements of es bytes, `chunk`
 * channels each, kept per thread between calls, one set per direction of the shift (a
 * training step alternates forward and backward): building them cost as much as shifting a
 * 7x7 stage's groups. One set per thread stays allocated until the process ends. NULL when
 * they could not be allocated. */
static const unsigned char *border_masks(int64_t H, int64_t W, int64_t es, int64_t chunk, const int64_t d[4],
                                         int reverse) {
    static _Thread_local struct { int64_t H, W, es, chunk; unsigned char *masks; } cache[2];
    const int r = reverse ? 1 : 0;
    if (cache[r].masks && cache[r].H == H && cache[r].W == W && cache[r].es == es && cache[r].chunk == chunk)
        return cache[r].masks;
    const int64_t row = W * es, plane = H * row, mbytes = chunk * plane;
    unsigned char *masks = malloc((size_t)(4 * mbytes));
    if (masks == NULL)
        return NULL;
    memset(masks, 0xFF, (size_t)(4 * mbytes));
    for (int k = 0; k < 4; k++)
        for (int64_t c = 0; c < chunk; c++) {
            unsigned char *m = masks + k * mbytes + c * plane;
            if (k < 2)  /* the opened column of every row: W - 1 when the values move left (d > 0) */
                for (int64_t i = 0; i < H; i++)
                    memset(m + i * row + (d[k] > 0 ? row - es : 0), 0, (size_t)es);
            else        /* the opened row: H - 1 when the values move up (d > 0) */
                memset(m + (d[k] > 0 ? plane - row : 0), 0, (size_t)row);
        }
    free(cache[r].masks);
    cache[r].H = H; cache[r].W = W; cache[r].es = es; cache[r].chunk = chunk; cache[r].masks = masks;
    return masks;
}

/* One image: the four groups, then the channels that stay. */
static void shift_image(const unsigned char *xi, unsigned char *oi, int64_t g, int64_t plane, int64_t image,
                        const int64_t d[4], const unsigned char *masks, int64_t mbytes, int64_t chunk) {
    const int64_t block = g * plane;
    for (int k = 0; k < 4 && g > 0; k++)
        shift_group(xi + k * block, oi + k * block, g, plane, d[k], masks + k * mbytes, chunk);
    memcpy(oi + 4 * block, xi + 4 * block, (size_t)(image - 4 * block));  /* aligned alike: memcpy is fine */
}

/* Channels-last: a pixel's C values lie together, group k at bytes [k*gb, (k+1)*gb) of it, so
 * an output pixel is five runs: each group's run out of its neighbour pixel (zeros where the
 * neighbour is outside the map) and the rest out of the same pixel. The runs are short (32 to
 * 256 bytes at ShiftViT's stages in fp32) and many (five a pixel), so they are moved in fixed
 * 32-, 16-, 8- and 1-byte steps, not by calls: a memcpy call or a general loop's set-up costs more
 * than moving 32 bytes. */
typedef unsigned char bytes32 __attribute__((vector_size(32), aligned(1), may_alias));
typedef unsigned char bytes16 __attribute__((vector_size(16), aligned(1), may_alias));
typedef uint64_t bytes8 __attribute__((aligned(1), may_alias));

/* n bytes out of s (NULL: zeros) in 32-byte steps, then 16, 8 and 1. `quantum` (a constant
 * where inlined): n is known to be a multiple of it (32 or 16), so the smaller steps are not
 * compiled in; 1: any n. s is the same for the whole run: the compiler takes the test out of
 * the loops. */
static inline __attribute__((always_inline)) void put_run(unsigned char *restrict d, const unsigned char *restrict s,
                                                          int64_t n, int quantum) {
    const bytes32 z32 = {0};
    const bytes16 z16 = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        *(bytes32 *)(d + i) = s ? *(const bytes32 *)(s + i) : z32;
    if (quantum == 32)
        return;
    for (; i + 16 <= n; i += 16)
        *(bytes16 *)(d + i) = s ? *(const bytes16 *)(s + i) : z16;
    if (quantum == 16)
        return;
    for (; i + 8 <= n; i += 8)
        *(bytes8 *)(d + i) = s ? *(const bytes8 *)(s + i) : 0;
    for (; i < n; i++)
        d[i] = s ? s[i] : 0;
}

/* One output pixel: group k out of src[k] (NULL: zeros), the rest out of the pixel itself. */
static inline __attribute__((always_inline)) void shift_pixel(unsigned char *op, const unsigned char *xp,
                                                              const unsigned char *const src[4], int64_t gb,
                                                              int64_t rest, int quantum) {
    for (int k = 0; k < 4; k++)
        put_run(op + k * gb, src[k] ? src[k] + k * gb : NULL, gb, quantum);
    put_run(op + 4 * gb, xp + 4 * gb, rest, quantum);
}

/* One (H, W, C) image. Group k's value at pixel (h, w) comes from (h, w + 1) for k = 0, (h, w - 1)
 * for 1, (h + 1, w) for 2, (h - 1, w) for 3; reverse swaps 0 with 1 and 2 with 3. */
static inline __attribute__((always_inline)) void shift_image_nhwc_(const unsigned char *xi, unsigned char *oi,
                                                                    int64_t C, int64_t H, int64_t W, int64_t g,
                                                                    int64_t es, int reverse, int quantum) {
    const int64_t pix = C * es, gb = g * es, rest = pix - 4 * gb, row = W * pix;
    const int64_t dw = reverse ? -1 : 1, dh = reverse ? -1 : 1;  /* group 0 reads w + dw, 1 w - dw, 2 h + dh, 3 h - dh */
    const int from_below = reverse ? 3 : 2;  /* the group that reads row h + 1 */
    for (int64_t h = 0; h < H; h++) {
        const int has2 = 0 <= h + dh && h + dh < H, has3 = 0 <= h - dh && h - dh < H;
        for (int64_t w = 0; w < W; w++) {
            const unsigned char *xp = xi + h * row + w * pix;
            const int has0 = 0 <= w + dw && w + dw < W, has1 = 0 <= w - dw && w - dw < W;
            const unsigned char *src[4] = {has0 ? xp + dw * pix : NULL, has1 ? xp - dw * pix : NULL,
                                           has2 ? xp + dh * row : NULL, has3 ? xp - dh * row : NULL};
            /* the run the row below gives, 8 pixels ahead: read a few lines at a time, 1 in 6
             * of a 56x56 map's pixel, the row below is not in cache yet and the hardware's
             * prefetch does not see the pattern (1.25-1.45x a copy without this, 1.0-1.15x with) */
            if (h + 1 < H)
                for (int64_t l = 0; l < gb; l += 64)
                    __builtin_prefetch(xp + row + 8 * pix + from_below * gb + l);
            shift_pixel(oi + h * row + w * pix, xp, src, gb, rest, quantum);
        }
    }
}

LOOP_KERNEL static void shift_image_nhwc(const unsigned char *xi, unsigned char *oi, int64_t C, int64_t H,
                                         int64_t W, int64_t g, int64_t es, int reverse) {
    /* runs of whole 32 bytes: fp32 with g a multiple of 8 (ShiftViT's stages); of whole 16:
     * fp16/bf16 likewise (2.3x a copy at 56x56 in a C harness, 2.8x with the general steps:
     * a half-precision pixel carries half the bytes for the same per-pixel work) */
    if ((g * es) % 32 == 0 && (C * es) % 32 == 0)
        shift_image_nhwc_(xi, oi, C, H, W, g, es, reverse, 32);
    else if ((g * es) % 16 == 0 && (C * es) % 16 == 0)
        shift_image_nhwc_(xi, oi, C, H, W, g, es, reverse, 16);
    else
        shift_image_nhwc_(xi, oi, C, H, W, g, es, reverse, 1);
}

/* One call's arguments and what is derived from them, for the per-image work. */
struct job {
    const unsigned char *x;
    unsigned char *out;
    int64_t x_batch_bytes, C, H, W, g, es, plane, image;
    int reverse, channels_last;
    int64_t d[4];                /* (B, C, H, W): each group's source offset in bytes */
    const unsigned char *masks;  /* (B, C, H, W): the border masks, `chunk` channels a direction */
    int64_t chunk, mbytes;
};

static void one_image(const struct job *j, int64_t b) {
    const unsigned char *xi = j->x + b * j->x_batch_bytes;
    unsigned char *oi = j->out + b * j->image;
    if (j->channels_last)
        shift_image_nhwc(xi, oi, j->C, j->H, j->W, j->g, j->es, j->reverse);
    else
        shift_image(xi, oi, j->g, j->plane, j->image, j->d, j->masks, j->mbytes, j->chunk);
}

/* x: B images, image b at x + b * x_batch_bytes, each dense (C, H, W) (channels_last: (H, W, C));
 * out: dense (B, C, H, W) (channels_last: (B, H, W, C)).
 * threads: the caller's intra-op thread count (torch.get_num_threads()).
 * Returns 0, or 1 when the masks could not be allocated (nothing written). */
int archbench_shift(const unsigned char *x, unsigned char *out, int64_t B, int64_t C, int64_t H, int64_t W,
                    int64_t g, int64_t es, int64_t x_batch_bytes, int reverse, int threads, int channels_last) {
    const int64_t plane = H * W * es, image = C * plane;
    if (B <= 0 || image <= 0)  /* nothing to write (and no mask of zero-sized maps to size) */
        return 0;
    struct job job = {x, out, x_batch_bytes, C, H, W, g, es, plane, image, reverse, channels_last, {0}, NULL, 0, 0};
    if (!channels_last) {
        /* d (bytes) of each group: forward left, right, up, down */
        const int64_t row = W * es;
        const int64_t d[4] = {reverse ? -es : es, reverse ? es : -es, reverse ? -row : row, reverse ? row : -row};
        memcpy(job.d, d, sizeof d);
        /* channels per masked call: about 8 KB (one channel where a channel is larger) */
        job.chunk = plane >= 8192 ? 1 : (8192 / plane < g ? 8192 / plane : g);
        job.mbytes = job.chunk * plane;  /* one direction's mask: `chunk` channels */
        if (g > 0 && (job.masks = border_masks(H, W, es, job.chunk, d, reverse)) == NULL)
            return 1;
    }
    /* below a megabyte a call is over before the threads would have started; and the loop
     * is not entered through the parallel region then: even with its `if` false, a region
     * costs ~0.5 us (the runtime's call), as much as the rest of a call's fixed cost */
    if (threads > 1 && B > 1 && B * image >= (1 << 20)) {
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t b = 0; b < B; b++)
            one_image(&job, b);
    } else {
        for (int64_t b = 0; b < B; b++)
            one_image(&job, b);
    }
    return 0;
}

/* The same, its arguments as one block of int64 (pointers as integers), in the order above:
 * a ctypes call with one argument costs a microsecond less than with twelve. */
int archbench_shift_packed(const int64_t *a) {
    return archbench_shift((const unsigned char *)(intptr_t)a[0], (unsigned char *)(intptr_t)a[1], a[2], a[3], a[4],
                           a[5], a[6], a[7], a[8], (int)a[9], (int)a[10], (int)a[11]);
}

/* Python's entry: shift_kernel.shift(x, out, B, C, H, W, g, es, x_batch_bytes, reverse, threads,
 * channels_last), the same twelve integers. A ctypes call costs ~1.2 us on this project's CPU, 3% of
 * copying a 7x7 stage's tensor; a METH_FASTCALL function ~0.1 us. Where the compiler finds no
 * Python.h, the library has only the C entries above and shift.py calls them through ctypes. */
#if defined(__has_include)
#if __has_include(<Python.h>)
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *py_shift(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int64_t a[12];
    if (nargs != 12)
        return PyErr_Format(PyExc_TypeError, "shift takes 12 integers (%zd given)", nargs);
    for (int i = 0; i < 12; i++)
        if ((a[i] = PyLong_AsLongLong(args[i])) == -1 && PyErr_Occurred())
            return NULL;
    int failed;
    Py_BEGIN_ALLOW_THREADS  /* as ctypes does: other Python threads run while this one shifts */
    failed = archbench_shift_packed(a);
    Py_END_ALLOW_THREADS
    if (failed)
        return PyErr_Format(PyExc_MemoryError, "shift: no memory for the border masks of a %lldx%lld map",
                            (long long)a[4], (long long)a[5]);
    Py_RETURN_NONE;
}

static PyMethodDef shift_kernel_methods[] = {
    {"shift", (PyCFunction)(void (*)(void))py_shift, METH_FASTCALL,
     "shift(x, out, B, C, H, W, g, es, x_batch_bytes, reverse, threads, channels_last): archbench_shift"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef shift_kernel_module = {PyModuleDef_HEAD_INIT, "shift_kernel", NULL, -1,
                                                 shift_kernel_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_shift_kernel(void) { return PyModule_Create(&shift_kernel_module); }
#endif
#endif
