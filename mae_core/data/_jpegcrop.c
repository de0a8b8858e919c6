/* Crop-window JPEG decoding with libjpeg(-turbo)'s scanline API, for mae_core/data/decode.py.
 *
 * Why C: libjpeg-turbo decodes only part of an image through jpeg_crop_scanline() (IDCT, upsampling
 * and colour conversion of the crop's columns only) and jpeg_skip_scanlines() (no IDCT for the rows
 * above the crop), and decoding can stop at the crop's last row. No maintained Python binding
 * exposes this on the libjpeg-turbo 2.1 that Debian 12 ships: PyTurboJPEG 1.x's crop() is a lossless
 * transform (re-encodes, then decodes again: slower than a full decode), and TurboJPEG 3's
 * tj3SetCroppingRegion needs libjpeg-turbo >= 3.0. libjpeg reports errors through a callback that
 * must not return (setjmp/longjmp), which ctypes cannot provide, hence this small extension.
 *
 * decode(data, denom, left, top, width, height, fast) -> bytearray of height x width x 3 (RGB)
 *   The JPEG decoded at 1/denom scale (denom in 1, 2, 4, 8), of which the box (left, top, width,
 *   height), in pixels of that scale, is returned. fast: libjpeg's fast integer IDCT and merged
 *   (replicating) chroma upsampling, else the accurate IDCT and smooth ("fancy") upsampling.
 *   Only YCbCr and greyscale JPEGs; anything else, corrupt data, or any libjpeg warning (strict, as
 *   simplejpeg's decoder is) raises ValueError and the caller falls back to another decoder.
 * header(data) -> (width, height, colorspace), colorspace "YCbCr", "Gray" or "other".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} strict_error_mgr;

static void on_error(j_common_ptr cinfo) {
    strict_error_mgr *err = (strict_error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* level -1 is a warning about corrupt data that libjpeg would paper over: refuse instead. */
    if (level < 0) on_error(cinfo);
}

static void init_errors(struct jpeg_decompress_struct *cinfo, strict_error_mgr *err) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    err->message[0] = '\0';
}

static PyObject *jpegcrop_header(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    struct jpeg_decompress_struct cinfo;
    strict_error_mgr err;
    init_errors(&cinfo, &err);
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "JPEG header: %s", err.message);
        return NULL;
    }
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "JPEG header: no image (tables only)");
        return NULL;
    }
    const char *space = cinfo.jpeg_color_space == JCS_YCbCr ? "YCbCr" : cinfo.jpeg_color_space == JCS_GRAYSCALE ? "Gray" : "other";
    PyObject *result = Py_BuildValue("(IIs)", cinfo.image_width, cinfo.image_height, space);
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *jpegcrop_decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int denom, left, top, width, height;
    int fast;
    if (!PyArg_ParseTuple(args, "y*IIIIIp", &data, &denom, &left, &top, &width, &height, &fast)) return NULL;
    if (!(denom == 1 || denom == 2 || denom == 4 || denom == 8) || width == 0 || height == 0) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "bad crop request: scale 1/%u, %ux%u", denom, width, height);
        return NULL;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)width * height * 3);
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    unsigned char *pixels = (unsigned char *)PyByteArray_AS_STRING(out);

    struct jpeg_decompress_struct cinfo;
    strict_error_mgr err;
    /* volatile: read after a longjmp */
    unsigned char *volatile row = NULL;
    const char *volatile problem = NULL;
    init_errors(&cinfo, &err);
    jpeg_create_decompress(&cinfo);
    PyThreadState *thread = PyEval_SaveThread(); /* no Python objects touched until restored */
    if (setjmp(err.jump)) {
        problem = err.message;
        goto done;
    }
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) {
        problem = "no image (tables only)";
        goto done;
    }
    if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_GRAYSCALE) {
        problem = "colour space other than YCbCr or greyscale";
        goto done;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = denom;
    cinfo.dct_method = fast ? JDCT_IFAST : JDCT_ISLOW;
    cinfo.do_fancy_upsampling = fast ? FALSE : TRUE;
    jpeg_start_decompress(&cinfo);
    if ((unsigned long)left + width > cinfo.output_width || (unsigned long)top + height > cinfo.output_height) {
        problem = "crop box outside the image";
        goto done;
    }
    /* Smooth chroma upsampling reads one chroma sample beyond the decoded columns' edge, which a
     * window replicates instead: decode two more pixels each side, so that the box itself comes out
     * as in a whole-image decode. jpeg_crop_scanline then widens the start down to an iMCU
     * boundary: [first, first + columns) holds [left, left + width). */
    unsigned int pad = fast ? 0 : 2;
    JDIMENSION first = left > pad ? left - pad : 0;
    JDIMENSION end = left + width + pad < cinfo.output_width ? left + width + pad : cinfo.output_width;
    JDIMENSION columns = end - first;
    if (first > 0 || columns < cinfo.output_width) jpeg_crop_scanline(&cinfo, &first, &columns);
    unsigned int shift = (left - first) * 3;
    row = malloc((size_t)columns * 3);
    if (row == NULL) {
        problem = "out of memory";
        goto done;
    }
    if (top > 0 && jpeg_skip_scanlines(&cinfo, top) != top) {
        problem = "truncated before the crop";
        goto done;
    }
    for (unsigned int y = 0; y < height; y++) {
        JSAMPROW target = row;
        if (jpeg_read_scanlines(&cinfo, &target, 1) != 1) {
            problem = "truncated inside the crop";
            goto done;
        }
        memcpy(pixels + (size_t)y * width * 3, row + shift, (size_t)width * 3);
    }
done:
    /* Rows below the crop are never decoded: abort rather than finish. */
    jpeg_destroy_decompress(&cinfo);
    free(row);
    PyEval_RestoreThread(thread);
    PyBuffer_Release(&data);
    if (problem != NULL) {
        Py_DECREF(out);
        PyErr_Format(PyExc_ValueError, "JPEG crop decode: %s", problem);
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"decode", jpegcrop_decode, METH_VARARGS, "decode(data, denom, left, top, width, height, fast) -> bytearray (height, width, 3) RGB"},
    {"header", jpegcrop_header, METH_VARARGS, "header(data) -> (width, height, colorspace)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop", "Crop-window JPEG decoding (libjpeg-turbo).", -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL) PyModule_AddIntConstant(m, "LIBJPEG_VERSION", JPEG_LIB_VERSION);
    return m;
}
