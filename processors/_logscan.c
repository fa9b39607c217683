/* processors._logscan: the per-record fields the hot path reads, straight from the OTLP
 * protobuf bytes of an ExportLogsServiceRequest.
 *
 * Why: reading a field of a decoded upb message from Python costs 150-750 ns per record
 * (a wrapper object per message, a str per string); four such reads per record were a fifth
 * of the sidecar's CPU (docs/performance.md). One pass over the bytes the receiver already
 * holds makes the same values for ~50 ns per record.
 *
 * It is an accelerator, never the source of truth: the request is always decoded by upb
 * first (that validates it), and when the bytes hold anything this scan does not follow
 * exactly as upb would (a field number with an unexpected wire type, a body sent twice,
 * groups, a severity_number outside 0..2^31-1, truncation), columns() returns None and the
 * caller reads the decoded message instead. Wire format: protobuf encoding spec; field
 * numbers from opentelemetry-proto: logs_service.proto, logs.proto, common.proto.
 *
 * Build: optional C extension (setup.py); processors/base.py works without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Protobuf wire types. */
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} span_t;

typedef struct {
    PyObject *bodies;     /* list[str]: body.string_value ("" when the body is not a string) */
    PyObject *severities; /* list[int]: severity_number */
    PyObject *texts;      /* list[str]: severity_text */
    PyObject *trace_ids;  /* list[bytes]: trace_id */
    PyObject *last_text;  /* the previous record's severity_text (a few values repeat) */
    span_t last_span;
} columns_t;

/* Read a varint at *p (< end); 0 when truncated or longer than 10 bytes. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    const uint8_t *q = *p;
    for (int shift = 0; shift < 70 && q < end; shift += 7) {
        uint8_t b = *q++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *p = q;
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* Read the length prefix of a LEN field and the span it covers; 0 when malformed. */
static int read_len(const uint8_t **p, const uint8_t *end, span_t *out)
{
    uint64_t n;
    if (!read_varint(p, end, &n) || n > (uint64_t)(end - *p))
        return 0;
    out->p = *p;
    out->end = *p + n;
    *p += n;
    return 1;
}

/* Skip one field's value of wire type wt; 0 when malformed or a group (not followed). */
static int skip_value(const uint8_t **p, const uint8_t *end, int wt)
{
    uint64_t v;
    span_t s;
    switch (wt) {
    case WT_VARINT:
        return read_varint(p, end, &v);
    case WT_I64:
        if (end - *p < 8)
            return 0;
        *p += 8;
        return 1;
    case WT_LEN:
        return read_len(p, end, &s);
    case WT_I32:
        if (end - *p < 4)
            return 0;
        *p += 4;
        return 1;
    default:
        return 0;
    }
}

/* Read a field tag; 0 when malformed (field number 0 or above 2^29-1). */
static int read_tag(const uint8_t **p, const uint8_t *end, uint32_t *field, int *wt)
{
    uint64_t key;
    if (!read_varint(p, end, &key) || (key >> 3) == 0 || (key >> 3) > 0x1fffffff)
        return 0;
    *field = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    return 1;
}

/* Wire type of AnyValue's oneof members: 1 string, 2 bool, 3 int, 4 double, 5 array,
 * 6 kvlist, 7 bytes. */
static const int ANY_VALUE_WT[8] = {-1, WT_LEN, WT_VARINT, WT_VARINT, WT_I64, WT_LEN, WT_LEN,
                                    WT_LEN};

/* AnyValue: the string_value when the oneof's last member set is string_value (field 1),
 * else an empty span (what upb's body.string_value reads). 0 when malformed, and for any
 * field above 7: newer schemas add members to the oneof (opentelemetry-proto 1.45 has
 * string_value_strindex = 8), and whether such a field replaces the string depends on the
 * schema upb was built with, so upb reads those bodies. */
static int scan_any_value(span_t v, span_t *str)
{
    const uint8_t *p = v.p;
    uint32_t last = 0, field;
    int wt;
    str->p = str->end = NULL;
    while (p < v.end) {
        if (!read_tag(&p, v.end, &field, &wt))
            return 0;
        if (field > 7 || wt != ANY_VALUE_WT[field]) /* see above; a wrong wire type makes
                                                      * upb keep it as an unknown field */
            return 0;
        if (field == 1) {
            if (!read_len(&p, v.end, str))
                return 0;
        } else if (!skip_value(&p, v.end, wt)) {
            return 0;
        }
        last = field;
    }
    if (last != 1)
        str->p = str->end = NULL;
    return 1;
}

static int append_str(PyObject *list, span_t s)
{
    PyObject *o = PyUnicode_DecodeUTF8((const char *)s.p, s.end - s.p, NULL);
    if (o == NULL)
        return -1;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc;
}

/* LogRecord: 2 severity_number (varint), 3 severity_text (string), 5 body (AnyValue),
 * 9 trace_id (bytes). Returns 1 ok, 0 not followed (use upb), -1 Python error. */
static int scan_record(span_t r, columns_t *out)
{
    const uint8_t *p = r.p;
    uint32_t field;
    int wt, has_body = 0;
    uint64_t severity = 0;
    span_t body = {NULL, NULL}, text = {NULL, NULL}, trace = {NULL, NULL}, s;
    while (p < r.end) {
        if (!read_tag(&p, r.end, &field, &wt))
            return 0;
        switch (field) {
        case 2:
            if (wt != WT_VARINT || !read_varint(&p, r.end, &severity))
                return 0;
            break;
        case 3:
        case 5:
        case 9:
            if (wt != WT_LEN || !read_len(&p, r.end, &s))
                return 0;
            if (field == 3) {
                text = s;
            } else if (field == 9) {
                trace = s;
            } else {
                if (has_body) /* a second body merges into the first in upb */
                    return 0;
                has_body = 1;
                body = s;
            }
            break;
        default:
            if (!skip_value(&p, r.end, wt))
                return 0;
        }
    }
    if (severity > 0x7fffffff) /* negative or over int32: upb's reading of it is not ours */
        return 0;
    span_t str = {NULL, NULL};
    if (has_body && !scan_any_value(body, &str))
        return 0;
    PyObject *sn = PyLong_FromUnsignedLongLong(severity);
    if (sn == NULL)
        return -1;
    int rc = PyList_Append(out->severities, sn);
    Py_DECREF(sn);
    if (rc < 0 || append_str(out->bodies, str) < 0)
        return -1;
    Py_ssize_t tlen = text.end - text.p;
    if (out->last_text == NULL || tlen != out->last_span.end - out->last_span.p
            || (tlen && memcmp(text.p, out->last_span.p, (size_t)tlen) != 0)) {
        PyObject *t = PyUnicode_DecodeUTF8((const char *)text.p, tlen, NULL);
        if (t == NULL)
            return -1;
        Py_XSETREF(out->last_text, t);
        out->last_span = text;
    }
    if (PyList_Append(out->texts, out->last_text) < 0)
        return -1;
    PyObject *tid = PyBytes_FromStringAndSize((const char *)trace.p, trace.end - trace.p);
    if (tid == NULL)
        return -1;
    rc = PyList_Append(out->trace_ids, tid);
    Py_DECREF(tid);
    return rc < 0 ? -1 : 1;
}

/* Walk the repeated field `field` of a message, calling each(span, out) for every entry;
 * other fields are skipped. Same return convention as scan_record. */
static int scan_repeated(span_t m, uint32_t want, int (*each)(span_t, columns_t *),
                         columns_t *out)
{
    const uint8_t *p = m.p;
    uint32_t field;
    int wt, rc;
    span_t s;
    while (p < m.end) {
        if (!read_tag(&p, m.end, &field, &wt))
            return 0;
        if (field == want) {
            if (wt != WT_LEN || !read_len(&p, m.end, &s))
                return 0;
            if ((rc = each(s, out)) != 1)
                return rc;
        } else if (!skip_value(&p, m.end, wt)) {
            return 0;
        }
    }
    return 1;
}

/* ScopeLogs: 2 log_records. */
static int scan_scope_logs(span_t m, columns_t *out)
{
    return scan_repeated(m, 2, scan_record, out);
}

/* ResourceLogs: 2 scope_logs. */
static int scan_resource_logs(span_t m, columns_t *out)
{
    return scan_repeated(m, 2, scan_scope_logs, out);
}

PyDoc_STRVAR(columns_doc,
"columns(data: bytes) -> tuple[list[str], list[int], list[str], list[bytes]] | None\n\n"
"(bodies, severity_numbers, severity_texts, trace_ids) of every log record of the\n"
"serialized ExportLogsServiceRequest ``data``, in request order (resource_logs, then\n"
"scope_logs, then log_records): the body's string_value (\"\" when the body is not a\n"
"string), severity_number, severity_text and trace_id, as upb reads them from the\n"
"decoded message. None when the bytes hold something this scan does not follow exactly\n"
"as upb does: read the decoded message instead. Never raises on bad bytes.");

static PyObject *columns(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    columns_t out = {PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0), NULL,
                     {NULL, NULL}};
    PyObject *result = NULL;
    if (out.bodies && out.severities && out.texts && out.trace_ids) {
        span_t all = {(const uint8_t *)buf.buf, (const uint8_t *)buf.buf + buf.len};
        int rc = scan_repeated(all, 1, scan_resource_logs, &out);
        if (rc == 1) {
            result = PyTuple_Pack(4, out.bodies, out.severities, out.texts, out.trace_ids);
        } else if (rc == 0 || PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            result = Py_NewRef(Py_None);
        }
    }
    Py_XDECREF(out.bodies);
    Py_XDECREF(out.severities);
    Py_XDECREF(out.texts);
    Py_XDECREF(out.trace_ids);
    Py_XDECREF(out.last_text);
    PyBuffer_Release(&buf);
    return result;
}

PyDoc_STRVAR(skeletons_doc,
"skeletons(texts: list[str]) -> list[bytes] | None\n\n"
"The skeleton of every text (processors/signature.py): its UTF-8 with b\"0x\" made\n"
"b\"\\xff\\xfe\", b\"0X\" made b\"\\xff\\xfd\" and every other ASCII digit made b\"5\". One pass\n"
"per text; the same bytes as the signature processor's pure-Python passes. None when a\n"
"text holds a NUL or a lone surrogate (the caller takes its slower path). Raises\n"
"TypeError when texts is not a list of str.");

/* One skeleton: src[0:n] (UTF-8) -> a new bytes object; NULL with an error set, or NULL
 * without one when src holds a NUL. Three simple passes rather than one branchy one (the
 * digit test per byte mispredicted; these compile to vector code and memchr):
 * digits -> '5'; then each "0x"/"0X" (found from its x) -> \xff\xfe / \xff\xfd. Every x or
 * X right after a '0' starts no other match, so this is the same as replacing the
 * non-overlapping matches left to right. */
static PyObject *skeleton(const uint8_t *src, Py_ssize_t n)
{
    if (n > 0 && memchr(src, 0, (size_t)n) != NULL)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t c = src[i];
        dst[i] = (uint8_t)(c - '0') < 10 ? '5' : c;
    }
    for (int k = 0; k < 2; k++) {
        const uint8_t x = k ? 'X' : 'x';
        const uint8_t *p = src + 1, *end = src + n;
        while (p < end && (p = memchr(p, x, (size_t)(end - p))) != NULL) {
            if (p[-1] == '0') {
                dst[p - src - 1] = 0xff;
                dst[p - src] = k ? 0xfd : 0xfe;
            }
            p++;
        }
    }
    return out;
}

static PyObject *skeletons(PyObject *self, PyObject *texts)
{
    if (!PyList_Check(texts)) {
        PyErr_SetString(PyExc_TypeError, "skeletons() takes a list of str");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(texts);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(texts, i);
        const uint8_t *src;
        Py_ssize_t len;
        if (!PyUnicode_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "skeletons() takes a list of str");
            goto fail;
        }
        if (PyUnicode_IS_COMPACT_ASCII(t)) {
            src = (const uint8_t *)PyUnicode_DATA(t);
            len = PyUnicode_GET_LENGTH(t);
        } else {
            src = (const uint8_t *)PyUnicode_AsUTF8AndSize(t, &len);
            if (src == NULL) { /* a lone surrogate: not UTF-8 */
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                    goto fail;
                PyErr_Clear();
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
        }
        PyObject *sk = skeleton(src, len);
        if (sk == NULL) {
            if (PyErr_Occurred())
                goto fail;
            Py_DECREF(out); /* a NUL */
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(out, i, sk);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"columns", columns, METH_O, columns_doc},
    {"skeletons", skeletons, METH_O, skeletons_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "processors._logscan",
    "The hot path's per-record fields read straight from OTLP protobuf bytes (see "
    "processors/_logscan.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__logscan(void)
{
    return PyModule_Create(&module);
}
