/*
 * strategies._xlogx: fused -sum p log p kernels for the per-item scorers (float32).
 *
 * Why this exists: BALD needs one logarithm per element of probs[N, K, C] (200 per item
 * at K = 20, C = 10). A library log (numpy's or torch's) costs 1-2 ns per float32 on an
 * AVX2 core, four to eight times what reading the value costs, and every extra pass over
 * the array (log, multiply, sum, mean over K) reads it again. Here each item's K x C
 * block is read once, while it sits in L1, and the log is a branch-free Cephes-style
 * polynomial evaluated eight lanes at a time (GCC/Clang vector extensions; the AVX2+FMA
 * variant is chosen at run time when the CPU has it).
 *
 * Accuracy: the log is the Cephes logf range reduction and 9-coefficient polynomial (about
 * 1e-7 relative error on normal floats); sums are accumulated in float32 lanes (at most
 * L / 8 terms per lane) and reduced in double. Edge cases follow the mathematics used by
 * the Python fallback: 0 log 0 = 0 (also for -0.0 and subnormals, whose terms are below
 * 1e-36), a negative value or NaN gives NaN, +inf gives a non-finite sum. The callers
 * raise on non-finite results.
 *
 * The module is optional: when it is not built (no C compiler at install time), the
 * scorers use torch for the same computation (strategies/_kernels.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* 32-byte vectors never cross a call boundary */
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

ALWAYS_INLINE v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Running sums for -sum p log p over a row, per lane: p log m and p e (p = m 2^e), and
 * the OR of all bit patterns, whose sign bit tells whether any value was negative. */
typedef struct {
    v8f plogm;
    v8f pe;
    v8i signs;
} acc8;

/* Adds eight lanes of p to the running sums. log p = log m + e log 2 with m in
 * [sqrt(1/2), sqrt(2)); log m = t - t^2/2 + t^3 P(t), t = m - 1 (Cephes logf). The
 * e log 2 part is summed apart, as p * e, and scaled once per row. */
ALWAYS_INLINE void xlogx8_add(acc8 *a, v8f x) {
    v8i bits;
    memcpy(&bits, &x, sizeof bits);
    v8i mbits = (bits & 0x007fffff) | 0x3f000000; /* m in [0.5, 1) */
    v8f m;
    memcpy(&m, &mbits, sizeof m);
    v8i small = m < splat(0.707106781186547524f); /* -1 where m -> 2m, e -> e - 1 */
    /* for x >= 0, bits >> 23 is the biased exponent; negative values are caught by signs */
    v8f e = __builtin_convertvector(((bits >> 23) - 126) + small, v8f);
    v8i m_if_small = mbits & small;
    v8f extra;
    memcpy(&extra, &m_if_small, sizeof extra);
    v8f t = (m - splat(1.0f)) + extra;
    v8f z = t * t;
    /* P(t) by Estrin's scheme: shorter dependency chains than Horner, same accuracy */
    v8f z2 = z * z;
    v8f p01 = splat(-2.4999993993e-1f) * t + splat(3.3333331174e-1f);
    v8f p23 = splat(-1.6668057665e-1f) * t + splat(2.0000714765e-1f);
    v8f p45 = splat(-1.2420140846e-1f) * t + splat(1.4249322787e-1f);
    v8f p67 = splat(-1.1514610310e-1f) * t + splat(1.1676998740e-1f);
    v8f p03 = p23 * z + p01;
    v8f p47 = p67 * z + p45;
    v8f p48 = (splat(7.0376836292e-2f) * z2) + p47;
    v8f y = p48 * z2 + p03;
    y = y * t;
    y = y * z + z * splat(-0.5f);
    a->plogm += x * (t + y);
    a->pe += x * e;
    a->signs |= bits;
}

/* True when any value summed into `a` was negative. -0.0 also sets the sign bit, so the
 * row is scanned to tell the two apart (-0.0 is a zero and adds 0). */
ALWAYS_INLINE int has_negative(const acc8 *a, const float *p, Py_ssize_t len) {
    v8i sign = a->signs & (int32_t)0x80000000;
    int any = 0;
    for (int i = 0; i < 8; i++) {
        any |= sign[i] != 0;
    }
    if (!any) {
        return 0;
    }
    for (Py_ssize_t j = 0; j < len; j++) {
        if (p[j] < 0.0f) {
            return 1;
        }
    }
    return 0;
}

ALWAYS_INLINE double lanes_sum(v8f v) {
    return (((double)v[0] + (double)v[4]) + ((double)v[2] + (double)v[6])) +
           (((double)v[1] + (double)v[5]) + ((double)v[3] + (double)v[7]));
}

/* sum p log p of the values summed into `a`, per lane. */
ALWAYS_INLINE v8f acc8_lanes(const acc8 *a) {
    return a->plogm + a->pe * splat(0.693147180559945309f);
}

ALWAYS_INLINE acc8 acc8_zero(void) {
    acc8 a = {splat(0.0f), splat(0.0f), {0, 0, 0, 0, 0, 0, 0, 0}};
    return a;
}

/* Sums p log p over `len` floats into `a`; `len` need not be a multiple of 8. */
ALWAYS_INLINE void xlogx_add_row(acc8 *a, const float *p, Py_ssize_t len) {
    Py_ssize_t j = 0;
    for (; j + 8 <= len; j += 8) {
        xlogx8_add(a, load8(p + j));
    }
    if (j < len) { /* zero-padded tail: 0 log 0 = 0 adds nothing */
        v8f tail = splat(0.0f);
        memcpy(&tail, p + j, (size_t)(len - j) * sizeof(float));
        xlogx8_add(a, tail);
    }
}

/* -sum_j p[j] log p[j] over one row of `len` floats; NaN if one is negative. */
ALWAYS_INLINE double row_neg_xlogx(const float *p, Py_ssize_t len) {
    acc8 a = acc8_zero();
    xlogx_add_row(&a, p, len);
    if (has_negative(&a, p, len)) {
        return NAN;
    }
    return -lanes_sum(acc8_lanes(&a));
}

ALWAYS_INLINE void rows_body(const float *p, Py_ssize_t n, Py_ssize_t len, double *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = row_neg_xlogx(p + i * len, len);
    }
}

/* Sum over k of the 8 columns starting at `col` of a k x c block. */
ALWAYS_INLINE v8f column_sum8(const float *b, Py_ssize_t k, Py_ssize_t c, Py_ssize_t col) {
    v8f s0 = load8(b + col), s1 = splat(0.0f);
    Py_ssize_t kk = 1;
    for (; kk + 2 <= k; kk += 2) {
        s0 += load8(b + kk * c + col);
        s1 += load8(b + (kk + 1) * c + col);
    }
    if (kk < k) {
        s0 += load8(b + kk * c + col);
    }
    return s0 + s1;
}

/* mean[col] = mean_k b[k, col] for one item's k x c block. */
ALWAYS_INLINE void mean_over_k(const float *b, Py_ssize_t k, Py_ssize_t c, float *mean) {
    const float inv_k = 1.0f / (float)k;
    if (c < 8) {
        for (Py_ssize_t col = 0; col < c; col++) {
            float s = 0.0f;
            for (Py_ssize_t kk = 0; kk < k; kk++) {
                s += b[kk * c + col];
            }
            mean[col] = s * inv_k;
        }
        return;
    }
    Py_ssize_t col = 0;
    for (; col + 8 <= c; col += 8) {
        v8f m = column_sum8(b, k, c, col) * splat(inv_k);
        memcpy(mean + col, &m, sizeof m);
    }
    if (col < c) { /* the last 8 columns again, overlapping: never reads past the row */
        v8f m = column_sum8(b, k, c, c - 8) * splat(inv_k);
        memcpy(mean + c - 8, &m, sizeof m);
    }
}

/* BALD of each item: H[mean_k p_k] - mean_k H[p_k]. `mean` is scratch of c rounded up
 * to a multiple of 8 floats, zero past c (zeros add nothing to an entropy). */
ALWAYS_INLINE void bald_body(const float *p, Py_ssize_t n, Py_ssize_t k, Py_ssize_t c,
                             float *mean, double *out) {
    const Py_ssize_t block = k * c;
    const Py_ssize_t padded = (c + 7) / 8 * 8;
    const v8f inv_k = splat(1.0f / (float)k);
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *b = p + i * block;
        acc8 members = acc8_zero(), pred = acc8_zero();
        xlogx_add_row(&members, b, block);
        mean_over_k(b, k, c, mean);
        for (Py_ssize_t col = 0; col < padded; col += 8) {
            xlogx8_add(&pred, load8(mean + col));
        }
        if (has_negative(&members, b, block)) {
            out[i] = NAN;
            continue;
        }
        /* H[mean] - mean_k H[p_k], combined per lane before the one reduction */
        out[i] = lanes_sum(acc8_lanes(&members) * inv_k - acc8_lanes(&pred));
    }
}

static void rows_base(const float *p, Py_ssize_t n, Py_ssize_t len, double *out) {
    rows_body(p, n, len, out);
}

static void bald_base(const float *p, Py_ssize_t n, Py_ssize_t k, Py_ssize_t c, float *mean,
                      double *out) {
    bald_body(p, n, k, c, mean, out);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_VARIANT 1
/* The same bodies, inlined into functions compiled for AVX2 + FMA. */
__attribute__((target("avx2,fma"))) static void rows_avx2(const float *p, Py_ssize_t n,
                                                          Py_ssize_t len, double *out) {
    rows_body(p, n, len, out);
}

__attribute__((target("avx2,fma"))) static void bald_avx2(const float *p, Py_ssize_t n,
                                                          Py_ssize_t k, Py_ssize_t c,
                                                          float *mean, double *out) {
    bald_body(p, n, k, c, mean, out);
}
#endif

typedef void (*rows_fn)(const float *, Py_ssize_t, Py_ssize_t, double *);
typedef void (*bald_fn)(const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t, float *, double *);

static rows_fn rows_impl = rows_base;
static bald_fn bald_impl = bald_base;
static const char *variant = "baseline";

static int check_buffers(Py_buffer *in, Py_buffer *out, Py_ssize_t in_items, Py_ssize_t n) {
    if (in_items < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes must be non-negative");
        return -1;
    }
    if (in->len != in_items * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "input holds %zd bytes, expected %zd float32 values",
                     in->len, in_items);
        return -1;
    }
    if (out->len != n * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "output holds %zd bytes, expected %zd float64 values",
                     out->len, n);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(neg_xlogx_rows_doc,
             "neg_xlogx_rows(p, out, n, length)\n--\n\n"
             "out[i] = -sum_j p[i, j] log p[i, j] for a C-contiguous float32 buffer of n rows\n"
             "of `length` values; `out` is a writable float64 buffer of n values.");

static PyObject *neg_xlogx_rows(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t n, len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nn", &in, &out, &n, &len)) {
        return NULL;
    }
    if (len < 1 || check_buffers(&in, &out, n * len, n) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "length must be >= 1");
        }
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rows_impl((const float *)in.buf, n, len, (double *)out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bald_doc,
             "bald(p, out, n, k, c)\n--\n\n"
             "out[i] = H[mean_k p[i, k]] - mean_k H[p[i, k]] (nats, not clipped) for a\n"
             "C-contiguous float32 buffer of shape [n, k, c]; `out` is float64 [n].");

static PyObject *bald(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t n, k, c;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nnn", &in, &out, &n, &k, &c)) {
        return NULL;
    }
    float *mean = NULL;
    if (k < 1 || c < 1) {
        PyErr_SetString(PyExc_ValueError, "k and c must be >= 1");
    } else if (check_buffers(&in, &out, n * k * c, n) == 0) {
        mean = PyMem_Calloc((size_t)((c + 7) / 8 * 8), sizeof(float));
        if (mean == NULL) {
            PyErr_NoMemory();
        }
    }
    if (mean == NULL) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bald_impl((const float *)in.buf, n, k, c, mean, (double *)out.buf);
    Py_END_ALLOW_THREADS
    PyMem_Free(mean);
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static int cpu_has_avx2_fma(void) {
#ifdef HAVE_AVX2_VARIANT
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static PyObject *get_variant(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(variant);
}

PyDoc_STRVAR(set_variant_doc,
             "set_variant(name)\n--\n\n"
             "Run the kernels with `name`: \"baseline\" (any CPU) or \"avx2+fma\" (chosen at import\n"
             "when the CPU has it). For tests and comparisons; ValueError if not available.");

static PyObject *set_variant(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name)) {
        return NULL;
    }
    if (strcmp(name, "baseline") == 0) {
        rows_impl = rows_base;
        bald_impl = bald_base;
        variant = "baseline";
        Py_RETURN_NONE;
    }
#ifdef HAVE_AVX2_VARIANT
    if (strcmp(name, "avx2+fma") == 0 && cpu_has_avx2_fma()) {
        rows_impl = rows_avx2;
        bald_impl = bald_avx2;
        variant = "avx2+fma";
        Py_RETURN_NONE;
    }
#endif
    PyErr_Format(PyExc_ValueError, "kernel variant %R is not available on this CPU or build",
                 PyTuple_GET_ITEM(args, 0));
    return NULL;
}

static PyMethodDef methods[] = {
    {"neg_xlogx_rows", neg_xlogx_rows, METH_VARARGS, neg_xlogx_rows_doc},
    {"bald", bald, METH_VARARGS, bald_doc},
    {"variant", get_variant, METH_NOARGS, "The instruction set the kernels run with."},
    {"set_variant", set_variant, METH_VARARGS, set_variant_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_xlogx", "Fused -sum p log p kernels (float32).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__xlogx(void) {
#ifdef HAVE_AVX2_VARIANT
    if (cpu_has_avx2_fma()) {
        rows_impl = rows_avx2;
        bald_impl = bald_avx2;
        variant = "avx2+fma";
    }
#endif
    return PyModule_Create(&module);
}
