/*
 * zramfs._tracescan: the trace reader's commonest records, decoded in one C call per batch.
 *
 * What it owns: `Scanner`, a callable object that walks a trace file's records from a given
 * position and decodes the ones a replay meets by the thousand -- a 4 KiB write of a new
 * content (WRITE_NEW, lz4-stored), a write whose one blob is in the reader's cache (WRITE),
 * a discard (DISCARD) and a blob definition (BLOB) -- into exactly the tuples and blob-table
 * entries zramfs.trace.TraceReader.raw_records makes of them (docs/trace-format.md).
 *
 * Why it exists: raw_records is the reference and stays (the pure build, and wherever this
 * module was not built or is older than this file).  Its per-record cost is interpreted
 * Python around struct, slicing, CRC and lz4 calls -- about 1.5 us a record, a fifth of a
 * replay -- which is what a replay pays and the live run does not.
 *
 * What it does not do: judge damage.  It decodes a record only when every check the
 * reference makes passes (frame inside the file and at most MAX_BODY, fixed fields inside
 * the body, CRC-32 of the body, the stored page decompressing to its stated length, a blob
 * defined in sequence); at anything else -- another record type, a codec other than lz4, a
 * cache miss, any failed check -- it stops and returns that record's position, and the
 * reference code takes over from there.  So a damaged or cut-short trace ends where the
 * reference says, by construction; tests/test_tracescan.py checks the two agree record for
 * record on whole traces, damaged ones included.
 *
 * Nothing is linked: the caller passes the addresses ctypes found of ISA-L's crc32_gzip_refl
 * (zlib's CRC-32, in the isal extension module) and of LZ4_decompress_safe (python-lz4's
 * extension module or the system's liblz4), the functions the reference calls through those
 * modules, and keeps both libraries loaded for the life of the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ISA-L: uint32_t crc32_gzip_refl(uint32_t init_crc, const unsigned char *buf, uint64_t len) */
typedef uint32_t (*crc32_fn)(uint32_t, const unsigned char *, uint64_t);
/* liblz4: int LZ4_decompress_safe(const char *src, char *dst, int srcSize, int dstCapacity) */
typedef int (*lz4_decompress_fn)(const char *, char *, int, int);

/* the format's constants (zramfs/trace.py) */
enum { T_BLOB = 1, T_WRITE = 2, T_DISCARD = 4, T_WRITE_NEW = 9 };
enum { CODEC_LZ4 = 2 };
#define MAX_BODY (16u << 20)
/* sizes of the joined structs: frame (8) + body head (12) + the record's fixed fields */
#define FRAME_SIZE 8
#define HEAD_SIZE 20
#define WRITE_NEW_SIZE (HEAD_SIZE + 15) /* offset Q, errno H, codec B, raw length I */
#define WRITE_SIZE (HEAD_SIZE + 18)     /* offset Q, length I, errno H, chunk count I */
#define DISCARD_SIZE (HEAD_SIZE + 19)   /* op B, offset Q, length Q, errno H */
#define BLOB_SIZE 9                     /* id I, codec B, raw length I */

/* little-endian loads (the format is little-endian; memcpy keeps them alignment-safe) */
static inline uint16_t ld16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ld32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ld64(const unsigned char *p) { return ld32(p) | ((uint64_t)ld32(p + 4) << 32); }

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    crc32_fn crc32;
    lz4_decompress_fn lz4_decompress;
} Scanner;

/* A tuple of `n` new references (stolen) to ints and bytes; NULL, with every one released,
 * on error.  Untracked by the cyclic collector, as CPython untracks such tuples itself at
 * their first collection (nothing in them can form a cycle): a replay's collections then
 * skip the batch and the blob table instead of visiting them once each. */
static PyObject *
tuple_of(Py_ssize_t n, PyObject **items)
{
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (t == NULL || items[i] == NULL) {
            for (Py_ssize_t j = i; j < n; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, items[i]);
    }
    PyObject_GC_UnTrack(t);
    return t;
}

/* Append a tuple of `n` new references (stolen) to `list`; -1 on error. */
static int
append_tuple(PyObject *list, Py_ssize_t n, PyObject **items)
{
    PyObject *t = tuple_of(n, items);
    if (t == NULL)
        return -1;
    int rc = PyList_Append(list, t);
    Py_DECREF(t);
    return rc;
}

#define U64(v) PyLong_FromUnsignedLongLong((unsigned long long)(v))
#define INT(v) PyLong_FromLong((long)(v))

/* Append the blob entry (start, stop, codec, raw length) to `blob_at`; -1 on error. */
static int
append_blob(PyObject *blob_at, Py_ssize_t start, Py_ssize_t stop, unsigned codec, uint32_t raw)
{
    PyObject *items[4] = {PyLong_FromSsize_t(start), PyLong_FromSsize_t(stop), INT(codec),
                          U64(raw)};
    return append_tuple(blob_at, 4, items);
}

/* Append the write tuple (T_WRITE, t_ns, dev, flags, offset, data, errno); steals `data`. */
static int
append_write(PyObject *out, const unsigned char *r, uint64_t offset, PyObject *data,
             unsigned err)
{
    /* r: the record's start; the body head is at r + 8: type B, flags B, dev H, t_ns Q */
    PyObject *items[7] = {INT(T_WRITE), U64(ld64(r + 12)), INT(ld16(r + 10)), INT(r[9]),
                          U64(offset), data, INT(err)};
    return append_tuple(out, 7, items);
}

/*
 * scanner(buffer, pos, size, out, blob_at, cache, limit) -> the position it stopped at.
 *
 * Decodes records from `pos` while they are of the kinds above and pass every check,
 * appending write and discard tuples to `out` (until it holds `limit` of them) and blob
 * entries (start, stop, codec, raw length) to `blob_at`.  `cache` is the reader's dict of
 * blob id -> content.  The record at the returned position is the reference's to read.
 */
static PyObject *
scanner_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Scanner *s = (Scanner *)self;
    Py_buffer view;
    Py_ssize_t pos, size, limit;
    PyObject *out, *blob_at, *cache;

    if (PyVectorcall_NARGS(nargsf) != 7 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError,
                        "Scanner takes (buffer, pos, size, out, blob_at, cache, limit)");
        return NULL;
    }
    out = args[3];
    blob_at = args[4];
    cache = args[5];
    if (!PyList_CheckExact(out) || !PyList_CheckExact(blob_at) || !PyDict_CheckExact(cache)) {
        PyErr_SetString(PyExc_TypeError, "Scanner: out and blob_at must be lists, cache a dict");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    size = PyLong_AsSsize_t(args[2]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    limit = PyLong_AsSsize_t(args[6]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pos < 0 || size < 0 || size > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "Scanner: pos and size must lie within the buffer");
        return NULL;
    }
    const unsigned char *m = (const unsigned char *)view.buf;
    /* every check below is the reference's, in the same terms; any failure: `break` */
    while (pos + HEAD_SIZE <= size && PyList_GET_SIZE(out) < limit) {
        const unsigned char *r = m + pos;
        uint32_t length = ld32(r);
        Py_ssize_t stop = pos + FRAME_SIZE + (Py_ssize_t)length;
        unsigned kind = r[8];
        if (length > MAX_BODY || stop > size)
            break;
        if (kind == T_WRITE_NEW) {
            Py_ssize_t at = pos + WRITE_NEW_SIZE;
            if (at > stop)
                break;
            uint32_t raw = ld32(r + 31);
            if (r[30] != CODEC_LZ4 || raw == 0 || raw > MAX_BODY)
                break; /* other codecs, and odd lengths, are the reference's */
            if (s->crc32(0, r + FRAME_SIZE, length) != ld32(r + 4))
                break;
            PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)raw);
            if (data == NULL)
                goto error;
            int n = s->lz4_decompress((const char *)m + at, PyBytes_AS_STRING(data),
                                      (int)(stop - at), (int)raw);
            if (n < 0 || (uint32_t)n != raw) {
                Py_DECREF(data);
                break;
            }
            if (append_blob(blob_at, at, stop, CODEC_LZ4, raw) < 0) {
                Py_DECREF(data);
                goto error;
            }
            if (append_write(out, r, ld64(r + 20), data, ld16(r + 28)) < 0)
                goto error;
        }
        else if (kind == T_WRITE) {
            Py_ssize_t at = pos + WRITE_SIZE;
            if (at > size)
                break; /* the fixed fields run past the file */
            uint32_t wlen = ld32(r + 28), count = ld32(r + 34);
            if (count != 1 || at + 4 != stop)
                break; /* several blobs, or a malformed record: the reference's */
            if (s->crc32(0, r + FRAME_SIZE, length) != ld32(r + 4))
                break;
            PyObject *key = PyLong_FromUnsignedLong(ld32(m + at));
            if (key == NULL)
                goto error;
            PyObject *data = PyDict_GetItemWithError(cache, key); /* borrowed */
            Py_DECREF(key);
            if (data == NULL) {
                if (PyErr_Occurred())
                    goto error;
                break; /* not cached: the reference decompresses it (and caches it) */
            }
            if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) == 0 ||
                (uint64_t)PyBytes_GET_SIZE(data) != wlen)
                break;
            Py_INCREF(data);
            if (append_write(out, r, ld64(r + 20), data, ld16(r + 32)) < 0)
                goto error;
        }
        else if (kind == T_DISCARD) {
            if (pos + DISCARD_SIZE > stop)
                break;
            if (s->crc32(0, r + FRAME_SIZE, length) != ld32(r + 4))
                break;
            PyObject *items[8] = {INT(T_DISCARD), U64(ld64(r + 12)), INT(ld16(r + 10)),
                                  INT(r[9]),        INT(r[20]),        U64(ld64(r + 21)),
                                  U64(ld64(r + 29)), INT(ld16(r + 37))};
            if (append_tuple(out, 8, items) < 0)
                goto error;
        }
        else if (kind == T_BLOB) {
            Py_ssize_t p = pos + HEAD_SIZE;
            if (p + BLOB_SIZE > stop)
                break;
            if (s->crc32(0, r + FRAME_SIZE, length) != ld32(r + 4))
                break;
            const unsigned char *b = m + p;
            if ((Py_ssize_t)ld32(b) != PyList_GET_SIZE(blob_at) || b[4] > CODEC_LZ4)
                break; /* out of sequence, or not a blob at all */
            if (append_blob(blob_at, p + BLOB_SIZE, stop, b[4], ld32(b + 5)) < 0)
                goto error;
        }
        else
            break; /* the other record types are rare: the reference reads them */
        pos = stop;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
error:
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
scanner_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    unsigned long long crc_address, lz4_address;
    static char *kwlist[] = {"crc32_gzip_refl", "lz4_decompress_safe", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KK:Scanner", kwlist, &crc_address,
                                     &lz4_address))
        return NULL;
    if (crc_address == 0 || lz4_address == 0) {
        PyErr_SetString(PyExc_ValueError, "Scanner: a null function address");
        return NULL;
    }
    Scanner *s = (Scanner *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->vectorcall = scanner_vectorcall;
    s->crc32 = (crc32_fn)(uintptr_t)crc_address;
    s->lz4_decompress = (lz4_decompress_fn)(uintptr_t)lz4_address;
    return (PyObject *)s;
}

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zramfs._tracescan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_dealloc = (destructor)PyObject_Del,
    .tp_vectorcall_offset = offsetof(Scanner, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Scanner(crc32_gzip_refl, lz4_decompress_safe): the functions' addresses.\n"
              "scanner(buffer, pos, size, out, blob_at, cache, limit) -> position stopped at.",
    .tp_new = scanner_new,
};

static struct PyModuleDef tracescan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zramfs._tracescan",
    .m_doc = "The trace reader's commonest records in one C call (see zramfs.trace).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__tracescan(void)
{
    PyObject *m;
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    m = PyModule_Create(&tracescan_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    /* setup.py defines it as the SHA-256 of this file, so a stale build can be told apart */
#ifdef TRACESCAN_SOURCE_SHA256
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", TRACESCAN_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
