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
 * decode(data, denom, left, top, width, height, fast, restarts=True) -> bytearray, height x width x 3 RGB
 *   The JPEG decoded at 1/denom scale (denom in 1, 2, 4, 8), of which the box (left, top, width,
 *   height), in pixels of that scale, is returned. fast: libjpeg's fast integer IDCT and merged
 *   (replicating) chroma upsampling, else the accurate IDCT and smooth ("fancy") upsampling.
 *   Only YCbCr and greyscale JPEGs; anything else, corrupt data, or any libjpeg warning (strict, as
 *   simplejpeg's decoder is) raises ValueError and the caller falls back to another decoder.
 *   When the JPEG has restart markers laid out by with_restarts(), only the restart segments
 *   that cover the box are entropy-decoded (see "Restart-marker windows" below); restarts=False
 *   (for benchmarks) decodes the scan from its start as for any other JPEG.
 * header(data) -> (width, height, colorspace), colorspace "YCbCr", "Gray" or "other".
 * with_restarts(data, columns) -> bytes; restart_layout(data) -> tuple or None: below.
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

/* The error manager of a (de)compress struct: errors and corrupt-data warnings longjmp to err->jump. */
static struct jpeg_error_mgr *strict_errors(strict_error_mgr *err) {
    struct jpeg_error_mgr *pub = jpeg_std_error(&err->pub);
    pub->error_exit = on_error;
    pub->emit_message = on_message;
    err->message[0] = '\0';
    return pub;
}

static PyObject *jpegcrop_header(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    struct jpeg_decompress_struct cinfo;
    strict_error_mgr err;
    cinfo.err = strict_errors(&err);
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


/* ---- Restart-marker windows ----------------------------------------------------------------------
 * A baseline JPEG's entropy-coded data has no index: everything above a crop's bottom row must be
 * Huffman-decoded, ~70-75% of a whole decode. Restart markers (RSTn, every `interval` MCUs) are the
 * format's own index: the coder resets its state (DC predictions, bit buffer) at each one, so a run
 * of restart segments decodes on its own. When every MCU row holds a whole number of segments, the
 * segments covering the crop, laid out as a smaller image (same tables, SOF size patched, markers
 * renumbered), form a valid JPEG of just that window: rows above and columns beside it are never
 * entropy-decoded. The pixels are those of the whole image (IDCT is per block; fancy chroma
 * upsampling reads one chroma sample across a block edge, so the window keeps a margin). Shards get
 * such markers losslessly from with_restarts() at write time; other JPEGs decode as before. */

typedef struct {
    size_t header_end;          /* first entropy-coded byte (after the SOS segment) */
    size_t sof_size_at;         /* offset of the SOF's 16-bit height (width follows) */
    unsigned int width, height; /* pixels */
    unsigned int mcu_w, mcu_h;  /* pixels per MCU */
    unsigned int mcus_per_row, mcu_rows, interval, segments_per_row;
} restart_layout;

static unsigned int be16(const unsigned char *p) { return ((unsigned int)p[0] << 8) | p[1]; }

/* The JPEG's restart layout, or 0 when it has none usable: only single-scan (interleaved, or one
 * component) Huffman-coded sequential JPEGs whose MCU rows hold a whole number of restart
 * segments. Reads the markers before the scan only (no entropy-coded byte). */
static int read_restart_layout(const unsigned char *data, size_t len, restart_layout *out) {
    if (len < 4 || data[0] != 0xFF || data[1] != 0xD8) return 0;
    size_t pos = 2;
    unsigned int interval = 0, components = 0, hmax = 0, vmax = 0;
    int have_sof = 0;
    while (pos + 4 <= len) {
        if (data[pos] != 0xFF) return 0;
        while (pos < len && data[pos] == 0xFF) pos++; /* fill bytes */
        if (pos + 3 > len) return 0;
        unsigned int marker = data[pos++];
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue; /* TEM, RSTn, SOI: no length */
        if (marker == 0xD9) return 0;                                          /* EOI before a scan */
        unsigned int length = be16(data + pos);
        if (length < 2 || pos + length > len) return 0;
        const unsigned char *seg = data + pos + 2;
        if (marker == 0xC0 || marker == 0xC1) { /* baseline / extended sequential, Huffman */
            if (have_sof || length < 8) return 0;
            components = seg[5];
            if (components == 0 || length < 8 + 3 * components) return 0;
            out->sof_size_at = pos + 3;
            out->height = be16(seg + 1);
            out->width = be16(seg + 3);
            for (unsigned int c = 0; c < components; c++) {
                unsigned int h = seg[7 + 3 * c] >> 4, v = seg[7 + 3 * c] & 15;
                if (h == 0 || v == 0) return 0;
                if (h > hmax) hmax = h;
                if (v > vmax) vmax = v;
            }
            have_sof = 1;
        } else if ((marker >= 0xC2 && marker <= 0xCF) && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
            return 0; /* progressive, lossless or arithmetic-coded: decoded whole */
        } else if (marker == 0xDD) {
            if (length != 4) return 0;
            interval = be16(seg);
        } else if (marker == 0xDA) {
            if (length < 3 || !have_sof || interval == 0 || out->width == 0 || out->height == 0 || seg[0] != components) return 0;
            out->header_end = pos + length;
            break;
        }
        pos += length;
    }
    if (out->header_end == 0) return 0;
    if (components == 1) { /* a one-component scan is not interleaved: its MCU is one 8x8 block */
        out->mcu_w = out->mcu_h = 8;
    } else {
        out->mcu_w = 8 * hmax;
        out->mcu_h = 8 * vmax;
    }
    out->mcus_per_row = (out->width + out->mcu_w - 1) / out->mcu_w;
    out->mcu_rows = (out->height + out->mcu_h - 1) / out->mcu_h;
    if (out->mcus_per_row % interval != 0) return 0; /* segments would straddle rows */
    out->interval = interval;
    out->segments_per_row = out->mcus_per_row / interval;
    return 1;
}

/* A JPEG of MCU columns [col0, col1) and rows [row0, row1) of `data` (col0, col1 multiples of the
 * restart interval, or col1 the row's end), in a malloc'ed buffer; NULL (with *why set) when the
 * scan does not hold the segments the layout promises. */
static unsigned char *window_jpeg(const unsigned char *data, size_t len, const restart_layout *layout,
                                  unsigned int col0, unsigned int col1, unsigned int row0, unsigned int row1,
                                  size_t *out_len, const char **why) {
    unsigned int per_row = layout->segments_per_row;
    unsigned int seg0 = col0 / layout->interval, seg1 = (col1 + layout->interval - 1) / layout->interval;
    size_t last = (size_t)(row1 - 1) * per_row + seg1; /* segments [0, last) are needed to find */
    size_t *starts = malloc(sizeof(size_t) * (last + 1));
    unsigned char *out = malloc(len + 2 * (size_t)(row1 - row0) * (seg1 - seg0) + 4);
    if (starts == NULL || out == NULL) {
        free(starts);
        free(out);
        *why = "out of memory";
        return NULL;
    }
    /* Find where each segment starts: after each RSTn. Inside entropy-coded data 0xFF is followed
     * by 0x00 (a stuffed byte), another 0xFF (fill), RSTn, or a marker that ends the scan. */
    size_t found = 1, pos = layout->header_end;
    starts[0] = pos;
    while (found <= last) {
        const unsigned char *ff = memchr(data + pos, 0xFF, len - pos);
        if (ff == NULL || (size_t)(ff - data) + 1 >= len) break;
        pos = (size_t)(ff - data) + 1;
        unsigned int next = data[pos];
        if (next == 0x00 || next == 0xFF) continue;
        if (next >= 0xD0 && next <= 0xD7) {
            if (next - 0xD0 != (found - 1) % 8) break; /* out of sequence: not what the layout says */
            starts[found++] = pos + 1;
            continue;
        }
        starts[found++] = pos + 1; /* end of scan: a segment "starting" past the marker */
        break;
    }
    if (found <= last) {
        free(starts);
        free(out);
        *why = "restart markers missing or out of order";
        return NULL;
    }
    size_t at = layout->header_end;
    memcpy(out, data, at);
    unsigned int width = col1 >= layout->mcus_per_row ? layout->width - col0 * layout->mcu_w : (col1 - col0) * layout->mcu_w;
    unsigned int height = row1 >= layout->mcu_rows ? layout->height - row0 * layout->mcu_h : (row1 - row0) * layout->mcu_h;
    out[layout->sof_size_at] = (unsigned char)(height >> 8);
    out[layout->sof_size_at + 1] = (unsigned char)height;
    out[layout->sof_size_at + 2] = (unsigned char)(width >> 8);
    out[layout->sof_size_at + 3] = (unsigned char)width;
    unsigned int written = 0;
    for (unsigned int row = row0; row < row1; row++) {
        for (unsigned int seg = seg0; seg < seg1; seg++) {
            size_t index = (size_t)row * per_row + seg;
            size_t begin = starts[index], end = starts[index + 1] - 2; /* before the next marker */
            if (written > 0) {
                out[at++] = 0xFF;
                out[at++] = (unsigned char)(0xD0 + (written - 1) % 8);
            }
            memcpy(out + at, data + begin, end - begin);
            at += end - begin;
            written++;
        }
    }
    out[at++] = 0xFF;
    out[at++] = 0xD9;
    free(starts);
    *out_len = at;
    return out;
}

static PyObject *jpegcrop_decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int denom, left, top, width, height;
    int fast, restarts = 1;
    if (!PyArg_ParseTuple(args, "y*IIIIIp|p", &data, &denom, &left, &top, &width, &height, &fast, &restarts)) return NULL;
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
    unsigned char *volatile window = NULL;
    const unsigned char *source = data.buf;
    size_t source_len = (size_t)data.len;
    cinfo.err = strict_errors(&err);
    jpeg_create_decompress(&cinfo);
    PyThreadState *thread = PyEval_SaveThread(); /* no Python objects touched until restored */
    restart_layout layout = {0};
    if (restarts && read_restart_layout(source, source_len, &layout)) {
        /* The box in full-size pixels, with the smooth upsampler's margin, out to whole MCUs and
         * (columns) restart segments. */
        unsigned int margin = fast ? 0 : 2 * denom;
        unsigned int x0 = left * denom > margin ? left * denom - margin : 0, y0 = top * denom > margin ? top * denom - margin : 0;
        unsigned int x1 = (left + width) * denom + margin, y1 = (top + height) * denom + margin;
        unsigned int col0 = x0 / layout.mcu_w / layout.interval * layout.interval;
        unsigned int col1 = (x1 + layout.mcu_w - 1) / layout.mcu_w;
        col1 = (col1 + layout.interval - 1) / layout.interval * layout.interval;
        unsigned int row0 = y0 / layout.mcu_h, row1 = (y1 + layout.mcu_h - 1) / layout.mcu_h;
        if (col1 > layout.mcus_per_row) col1 = layout.mcus_per_row;
        if (row1 > layout.mcu_rows) row1 = layout.mcu_rows;
        if (col0 < col1 && row0 < row1 && (col0 > 0 || row0 > 0 || col1 < layout.mcus_per_row || row1 < layout.mcu_rows)) {
            const char *why = NULL;
            size_t window_len = 0;
            window = window_jpeg(source, source_len, &layout, col0, col1, row0, row1, &window_len, &why);
            if (window != NULL) {
                source = window;
                source_len = window_len;
                left -= col0 * layout.mcu_w / denom;
                top -= row0 * layout.mcu_h / denom;
            } /* else: decode the whole scan, which reports what is wrong with it */
        }
    }
    if (setjmp(err.jump)) {
        problem = err.message;
        goto done;
    }
    jpeg_mem_src(&cinfo, source, (unsigned long)source_len);
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
    free(window);
    PyEval_RestoreThread(thread);
    PyBuffer_Release(&data);
    if (problem != NULL) {
        Py_DECREF(out);
        PyErr_Format(PyExc_ValueError, "JPEG crop decode: %s", problem);
        return NULL;
    }
    return out;
}


/* with_restarts(data, columns) -> bytes: the same image, losslessly (the same DCT coefficients, so
 * the same pixels in any decoder), as a baseline JPEG with a restart marker every few MCUs, so
 * that each restart segment spans about `columns` pixels of one MCU row (the largest whole divisor
 * of the row's MCUs that fits), and with optimised Huffman tables (which pays for the markers).
 * Progressive JPEGs come out baseline. Metadata markers (EXIF, ICC, comments) are not copied: no
 * decoder path of ours reads them. Only YCbCr and greyscale JPEGs; ValueError otherwise. */
static PyObject *jpegcrop_with_restarts(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int columns;
    if (!PyArg_ParseTuple(args, "y*I", &data, &columns)) return NULL;
    struct jpeg_decompress_struct src;
    struct jpeg_compress_struct dst;
    strict_error_mgr src_err, dst_err;
    unsigned char *volatile encoded = NULL;
    unsigned long encoded_len = 0;
    const char *volatile problem = NULL;
    volatile int dst_created = 0;
    src.err = strict_errors(&src_err);
    jpeg_create_decompress(&src);
    PyThreadState *thread = PyEval_SaveThread();
    if (setjmp(src_err.jump)) {
        problem = src_err.message;
        goto done;
    }
    dst.err = strict_errors(&dst_err);
    if (setjmp(dst_err.jump)) {
        problem = dst_err.message;
        goto done;
    }
    jpeg_create_compress(&dst);
    dst_created = 1;
    jpeg_mem_src(&src, (const unsigned char *)data.buf, (unsigned long)data.len);
    if (jpeg_read_header(&src, TRUE) != JPEG_HEADER_OK) {
        problem = "no image (tables only)";
        goto done;
    }
    if (src.jpeg_color_space != JCS_YCbCr && src.jpeg_color_space != JCS_GRAYSCALE) {
        problem = "colour space other than YCbCr or greyscale";
        goto done;
    }
    jvirt_barray_ptr *coefficients = jpeg_read_coefficients(&src);
    jpeg_copy_critical_parameters(&src, &dst);
    unsigned int mcu_w = src.num_components == 1 ? 8 : 8 * (unsigned int)src.max_h_samp_factor;
    unsigned int per_row = (src.image_width + mcu_w - 1) / mcu_w;
    unsigned int interval = columns / mcu_w;
    if (interval < 1) interval = 1;
    while (per_row % interval != 0) interval--;
    dst.restart_interval = interval;
    dst.optimize_coding = TRUE;
    jpeg_mem_dest(&dst, (unsigned char **)&encoded, &encoded_len);
    jpeg_write_coefficients(&dst, coefficients);
    jpeg_finish_compress(&dst);
    jpeg_finish_decompress(&src);
done:
    if (dst_created) jpeg_destroy_compress(&dst);
    jpeg_destroy_decompress(&src);
    PyEval_RestoreThread(thread);
    PyBuffer_Release(&data);
    PyObject *result = NULL;
    if (problem != NULL)
        PyErr_Format(PyExc_ValueError, "JPEG restart markers: %s", problem);
    else
        result = PyBytes_FromStringAndSize((const char *)encoded, (Py_ssize_t)encoded_len);
    free(encoded);
    return result;
}


/* restart_layout(data) -> (interval, mcu_width, mcu_height) or None: how decode() can cut windows
 * out of this JPEG's scan (restart interval in MCUs, MCU size in pixels), None when it cannot. */
static PyObject *jpegcrop_restart_layout(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    restart_layout layout = {0};
    int usable = read_restart_layout(data.buf, (size_t)data.len, &layout);
    PyBuffer_Release(&data);
    if (!usable) Py_RETURN_NONE;
    return Py_BuildValue("(III)", layout.interval, layout.mcu_w, layout.mcu_h);
}

static PyMethodDef methods[] = {
    {"decode", jpegcrop_decode, METH_VARARGS, "decode(data, denom, left, top, width, height, fast) -> bytearray (height, width, 3) RGB"},
    {"header", jpegcrop_header, METH_VARARGS, "header(data) -> (width, height, colorspace)"},
    {"restart_layout", jpegcrop_restart_layout, METH_VARARGS, "restart_layout(data) -> (interval, mcu_width, mcu_height) or None"},
    {"with_restarts", jpegcrop_with_restarts, METH_VARARGS, "with_restarts(data, columns) -> bytes: lossless, restart markers every ~columns px"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop", "Crop-window JPEG decoding (libjpeg-turbo).", -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL) PyModule_AddIntConstant(m, "LIBJPEG_VERSION", JPEG_LIB_VERSION);
    return m;
}
