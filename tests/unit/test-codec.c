/* test-codec.c — bf_decompress() against streams made here with zlib and
 * zstd: the exact-fit case every backend takes (ISA-L where built in, else
 * libdeflate), and the edges that must keep qemu's rules whichever backend
 * answers first: a deflate stream longer than the unit gives the unit's
 * first bytes, a shorter or damaged one is an error, trailing sector padding
 * is ignored, a bad zlib Adler-32 is an error, a zstd unit must end where a
 * frame ends.
 * Thread model: single-threaded.
 */
#include "internal.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#define UNIT (64u * 1024)
#define BIG  (UNIT + 4096)

static uint8_t text[BIG], noise[BIG], out[BIG], comp[2 * BIG + 1024];

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Text-like data (compresses ~3:1) and incompressible noise. */
static void make_data(void)
{
    static const char *words[] = { "qcow2 ", "cluster ", "the ", "grain ", "of ",
                                   "table ", "refcount ", "snapshot\n", "a ", "disk " };
    size_t n = 0;
    while (n < BIG) {
        const char *w = words[next() % 10];
        size_t l = strlen(w);
        if (l > BIG - n)
            l = BIG - n;
        memcpy(text + n, w, l);
        n += l;
    }
    for (size_t i = 0; i < BIG; i++)
        noise[i] = (uint8_t)next();
}

/* Deflate @len bytes of @src; @wbits as for deflateInit2 (-12 raw like
 * qemu, -15 raw, 15 with the zlib wrapper).  Returns the stream length. */
static size_t deflate_buf(const uint8_t *src, size_t len, int wbits)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, wbits, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = comp;
    z.avail_out = sizeof comp;
    int r = deflate(&z, Z_FINISH);
    size_t n = z.total_out;
    deflateEnd(&z);
    return r == Z_STREAM_END ? n : 0;
}

static int dec(enum bf_codec c, size_t inlen, size_t outlen)
{
    memset(out, 0xa5, sizeof out);
    return bf_decompress(c, comp, inlen, out, outlen);
}

static void deflate_cases(const char *name, const uint8_t *src, int wbits, enum bf_codec c)
{
    size_t n = deflate_buf(src, UNIT, wbits);
    TAP_OK(n > 0, "%s: zlib made a stream of the unit (%zu bytes)", name, n);
    TAP_OK(dec(c, n, UNIT) == 0 && memcmp(out, src, UNIT) == 0,
           "%s: exact stream inflates to the unit", name);
    TAP_OK(out[UNIT] == 0xa5, "%s: nothing written past the unit", name);

    memset(comp + n, 0, 511);
    TAP_OK(dec(c, n + 511, UNIT) == 0 && memcmp(out, src, UNIT) == 0,
           "%s: padding after the stream is ignored", name);

    TAP_OK(dec(c, n / 2, UNIT) == -EIO, "%s: truncated stream is an error", name);
    TAP_OK(dec(c, n, UNIT - 1) == 0 && memcmp(out, src, UNIT - 1) == 0,
           "%s: stream one byte longer than the unit gives its first bytes", name);

    size_t m = deflate_buf(src, BIG, wbits);
    TAP_OK(m > 0 && dec(c, m, UNIT) == 0 && memcmp(out, src, UNIT) == 0,
           "%s: stream longer than the unit gives the unit's first bytes", name);
    TAP_OK(out[UNIT] == 0xa5, "%s: ...and nothing past it", name);

    size_t s = deflate_buf(src, UNIT - 100, wbits);
    TAP_OK(s > 0 && dec(c, s, UNIT) == -EIO, "%s: stream shorter than the unit is an error",
           name);
}

int main(void)
{
    make_data();
    deflate_cases("raw deflate, 4 KiB window (qemu), text", text, -12, BF_CODEC_DEFLATE);
    deflate_cases("raw deflate, 32 KiB window, text", text, -15, BF_CODEC_DEFLATE);
    deflate_cases("raw deflate, noise (stored blocks)", noise, -15, BF_CODEC_DEFLATE);
    deflate_cases("zlib wrapper (vmdk), text", text, 15, BF_CODEC_ZLIB);

    /* a reserved block type (BTYPE 11) */
    comp[0] = 0x07;
    memset(comp + 1, 0, 16);
    TAP_OK(dec(BF_CODEC_DEFLATE, 17, UNIT) == -EIO, "reserved deflate block type is an error");
    /* fixed Huffman block whose first symbol copies from distance 1 of nothing */
    static const uint8_t far_back[] = { 0x03, 0x02, 0x00 };
    memcpy(comp, far_back, sizeof far_back);
    TAP_OK(dec(BF_CODEC_DEFLATE, sizeof far_back, 3) == -EIO,
           "a match reaching before the start of the unit is an error");

    size_t n = deflate_buf(text, UNIT, 15);
    comp[n - 1] ^= 0x01;
    TAP_OK(dec(BF_CODEC_ZLIB, n, UNIT) == -EIO, "zlib wrapper: a wrong Adler-32 is an error");
    n = deflate_buf(text, UNIT, 15);
    comp[0] ^= 0x01;
    TAP_OK(dec(BF_CODEC_ZLIB, n, UNIT) == -EIO, "zlib wrapper: a bad header is an error");

    /* zstd: one frame, two frames, a frame too long or too short */
    n = ZSTD_compress(comp, sizeof comp, text, UNIT, 3);
    TAP_OK(!ZSTD_isError(n) && dec(BF_CODEC_ZSTD, n, UNIT) == 0 && memcmp(out, text, UNIT) == 0,
           "zstd: one frame inflates to the unit");
    memset(comp + n, 0, 100);
    TAP_OK(dec(BF_CODEC_ZSTD, n + 100, UNIT) == 0 && memcmp(out, text, UNIT) == 0,
           "zstd: padding after the frame is ignored");
    size_t a = ZSTD_compress(comp, sizeof comp, text, UNIT / 2, 3);
    size_t b = ZSTD_compress(comp + a, sizeof comp - a, text + UNIT / 2, UNIT / 2, 3);
    TAP_OK(!ZSTD_isError(a) && !ZSTD_isError(b) && dec(BF_CODEC_ZSTD, a + b, UNIT) == 0 &&
           memcmp(out, text, UNIT) == 0, "zstd: two frames make the unit");
    n = ZSTD_compress(comp, sizeof comp, text, BIG, 3);
    TAP_OK(!ZSTD_isError(n) && dec(BF_CODEC_ZSTD, n, UNIT) == -EIO,
           "zstd: a frame longer than the unit is an error");
    n = ZSTD_compress(comp, sizeof comp, text, UNIT - 100, 3);
    TAP_OK(!ZSTD_isError(n) && dec(BF_CODEC_ZSTD, n, UNIT) == -EIO,
           "zstd: a frame shorter than the unit is an error");
    return tap_done();
}
