/*
 * zramfs._lz4fast: the kernel-exact lz4 compression of a page, as one C call.
 *
 * What it owns: `Compressor`, a callable object that compresses a buffer with liblz4's
 * LZ4_compress_fast() (the call the kernel's lz4 backend makes, so the compressed lengths are
 * the kernel's; docs/fuse-and-codecs.md) and returns the compressed bytes; and `Decompressor`,
 * which decompresses with LZ4_decompress_safe() straight into the bytes object it returns,
 * which must come out exactly `out_len` long (the kernel's lz4 backend checks the same).
 *
 * Why it exists: zramfs.codecs.Lz4Codec reaches the same function through ctypes.  That path
 * is the reference and stays (the pure build, and wherever this module was not built); it
 * costs an interpreted frame plus ctypes' argument conversion, about 0.6 us of a 4 KiB write
 * (a tenth of the write outside the codec).  These objects are what Lz4Codec installs as its
 * `compress` and `decompress` when the compiled build runs; tests/test_lz4fast.py checks that
 * they give the same bytes and the same errors as the Python paths (python-lz4's decompress,
 * an interpreted frame around it, costs ~0.3 us more a page).
 *
 * liblz4 is not linked: the caller passes the address of the function that ctypes found
 * (in python-lz4's extension module, or the system's liblz4), and keeps that library loaded
 * for the life of the process.  The GIL is released around each call, as ctypes does, so
 * threads compress and decompress in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* LZ4_compress_fast(src, dst, srcSize, dstCapacity, acceleration): compressed size, 0 on error */
typedef int (*lz4_compress_fast_fn)(const char *, char *, int, int, int);

/* zcomp gives the backend a 2 * PAGE_SIZE destination; a page of up to 4 KiB fits on the stack */
#define STACK_DST 8192
/* LZ4_COMPRESSBOUND(n): the destination a larger input needs */
#define LZ4_BOUND(n) ((n) + (n) / 255 + 16)

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    lz4_compress_fast_fn fn;
    int acceleration;
    PyObject *error; /* the exception class raised when compression fails */
} Compressor;

static PyObject *
compressor_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Compressor *c = (Compressor *)self;
    Py_buffer src;
    char stack_dst[STACK_DST];
    char *dst = stack_dst;
    int capacity = STACK_DST, n;
    PyObject *out;

    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Compressor takes exactly one buffer");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (src.len > INT_MAX / 2) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_OverflowError, "buffer too large for lz4");
        return NULL;
    }
    if (LZ4_BOUND(src.len) > STACK_DST) {
        capacity = (int)LZ4_BOUND(src.len);
        dst = PyMem_Malloc((size_t)capacity);
        if (dst == NULL) {
            PyBuffer_Release(&src);
            return PyErr_NoMemory();
        }
    }
    Py_BEGIN_ALLOW_THREADS
    n = c->fn((const char *)src.buf, dst, (int)src.len, capacity, c->acceleration);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    if (n <= 0)
        out = PyErr_Format(c->error, "lz4: compression failed (%d)", n);
    else
        out = PyBytes_FromStringAndSize(dst, n);
    if (dst != stack_dst)
        PyMem_Free(dst);
    return out;
}

/* The constructors' shared checks: a function address and an exception class to raise */
static int
check_binding(const char *who, unsigned long long address, PyObject *error)
{
    if (address == 0) {
        PyErr_Format(PyExc_ValueError, "%s: a null function address", who);
        return -1;
    }
    if (!PyType_Check(error) || !PyType_IsSubtype((PyTypeObject *)error,
                                                  (PyTypeObject *)PyExc_Exception)) {
        PyErr_Format(PyExc_TypeError, "%s: error must be an exception class", who);
        return -1;
    }
    return 0;
}

static PyObject *
compressor_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    unsigned long long address;
    int acceleration;
    PyObject *error;
    static char *kwlist[] = {"address", "acceleration", "error", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KiO:Compressor", kwlist, &address,
                                     &acceleration, &error))
        return NULL;
    if (check_binding("Compressor", address, error) < 0)
        return NULL;
    Compressor *c = (Compressor *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->vectorcall = compressor_vectorcall;
    c->fn = (lz4_compress_fast_fn)(uintptr_t)address;
    c->acceleration = acceleration;
    Py_INCREF(error);
    c->error = error;
    return (PyObject *)c;
}

static void
compressor_dealloc(Compressor *c)
{
    Py_XDECREF(c->error);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *
compressor_get_acceleration(Compressor *c, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(c->acceleration);
}

static PyGetSetDef compressor_getset[] = {
    {"acceleration", (getter)compressor_get_acceleration, NULL, "LZ4's acceleration (level)",
     NULL},
    {NULL},
};

static PyTypeObject CompressorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zramfs._lz4fast.Compressor",
    .tp_basicsize = sizeof(Compressor),
    .tp_dealloc = (destructor)compressor_dealloc,
    .tp_vectorcall_offset = offsetof(Compressor, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Compressor(address, acceleration, error): call it with a buffer to get\n"
              "LZ4_compress_fast()'s output as bytes (address: the function's address).",
    .tp_getset = compressor_getset,
    .tp_new = compressor_new,
};

/* LZ4_decompress_safe(src, dst, compressedSize, dstCapacity): bytes written, < 0 on bad input */
typedef int (*lz4_decompress_safe_fn)(const char *, char *, int, int);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    lz4_decompress_safe_fn fn;
    PyObject *error; /* the exception class raised when the data does not decompress */
} Decompressor;

/* out_len when the call gives none: a page (zramfs.codecs.PAGE_SIZE) */
#define DEFAULT_OUT_LEN 4096

/* Decompressor(data, out_len=4096): exactly out_len bytes, or the error class */
static PyObject *
decompressor_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Decompressor *d = (Decompressor *)self;
    Py_buffer src;
    Py_ssize_t out_len;
    PyObject *out;
    int n;

    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || nargs > 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Decompressor takes a buffer and out_len");
        return NULL;
    }
    out_len = nargs == 2 ? PyLong_AsSsize_t(args[1]) : DEFAULT_OUT_LEN;
    if (out_len == -1 && PyErr_Occurred())
        return NULL;
    if (out_len < 0 || out_len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "Decompressor: out_len out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (src.len > INT_MAX) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_OverflowError, "buffer too large for lz4");
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, out_len);
    if (out == NULL) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    n = d->fn((const char *)src.buf, PyBytes_AS_STRING(out), (int)src.len, (int)out_len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    if (n == out_len)
        return out;
    Py_DECREF(out);
    if (n < 0)
        return PyErr_Format(d->error, "lz4: corrupt input (LZ4_decompress_safe %d)", n);
    return PyErr_Format(d->error, "lz4: decompressed %d bytes, expected %zd", n, out_len);
}

static PyObject *
decompressor_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    unsigned long long address;
    PyObject *error;
    static char *kwlist[] = {"address", "error", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KO:Decompressor", kwlist, &address, &error))
        return NULL;
    if (check_binding("Decompressor", address, error) < 0)
        return NULL;
    Decompressor *d = (Decompressor *)type->tp_alloc(type, 0);
    if (d == NULL)
        return NULL;
    d->vectorcall = decompressor_vectorcall;
    d->fn = (lz4_decompress_safe_fn)(uintptr_t)address;
    Py_INCREF(error);
    d->error = error;
    return (PyObject *)d;
}

static void
decompressor_dealloc(Decompressor *d)
{
    Py_XDECREF(d->error);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyTypeObject DecompressorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zramfs._lz4fast.Decompressor",
    .tp_basicsize = sizeof(Decompressor),
    .tp_dealloc = (destructor)decompressor_dealloc,
    .tp_vectorcall_offset = offsetof(Decompressor, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Decompressor(address, error): call it with (data, out_len=4096) to get\n"
              "LZ4_decompress_safe()'s output, exactly out_len bytes (address: the function's).",
    .tp_new = decompressor_new,
};

static struct PyModuleDef lz4fast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zramfs._lz4fast",
    .m_doc = "Kernel-exact lz4 page compression and decompression, one C call each "
             "(see zramfs.codecs).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__lz4fast(void)
{
    PyObject *m;
    if (PyType_Ready(&CompressorType) < 0 || PyType_Ready(&DecompressorType) < 0)
        return NULL;
    m = PyModule_Create(&lz4fast_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CompressorType);
    if (PyModule_AddObject(m, "Compressor", (PyObject *)&CompressorType) < 0) {
        Py_DECREF(&CompressorType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&DecompressorType);
    if (PyModule_AddObject(m, "Decompressor", (PyObject *)&DecompressorType) < 0) {
        Py_DECREF(&DecompressorType);
        Py_DECREF(m);
        return NULL;
    }
    /* setup.py defines it as the SHA-256 of this file, so a stale build can be told apart */
#ifdef LZ4FAST_SOURCE_SHA256
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", LZ4FAST_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
