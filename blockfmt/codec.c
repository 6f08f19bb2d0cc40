/* codec.c — decompress one compressed unit (a qcow2 cluster, a vmdk grain).
 *
 * Raw deflate (and deflate in a zlib wrapper) goes through libdeflate, which
 * inflates whole buffers about twice as fast as zlib; zlib is kept for the
 * one case libdeflate cannot do:
 * a stream that would produce more than the unit, of which qemu keeps the
 * first unit's worth.  zstd input may hold several frames; the unit must
 * end exactly at the end of a frame (qemu's rule).
 *
 * Where the build has Intel's ISA-L (HAVE_ISAL: Debian builds it for amd64
 * and arm64), its inflate goes first: on the text-like data of `make bench`
 * it takes ~15% less CPU than libdeflate.  It only answers the common case,
 * a stream that ends exactly at the end of the unit; anything else (longer,
 * shorter, damaged) is left to libdeflate and zlib, so the rules above and
 * the error cases stay exactly theirs.
 *
 * Thread model: each thread keeps its own decompressor objects (thread-local,
 * freed when the thread exits), so decompression never takes a lock.
 */
#include "internal.h"

#include <libdeflate.h>
#include <stdlib.h>
#ifdef HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif
#include <zlib.h>
#include <zstd.h>

static pthread_key_t key_deflate, key_zstd;
static pthread_once_t keys_once = PTHREAD_ONCE_INIT;

static void free_deflate(void *p) { libdeflate_free_decompressor(p); }
static void free_zstd(void *p) { ZSTD_freeDCtx(p); }

static void make_keys(void)
{
    pthread_key_create(&key_deflate, free_deflate);
    pthread_key_create(&key_zstd, free_zstd);
}

static struct libdeflate_decompressor *thread_deflate(void)
{
    pthread_once(&keys_once, make_keys);
    struct libdeflate_decompressor *d = pthread_getspecific(key_deflate);
    if (!d) {
        d = libdeflate_alloc_decompressor();
        if (d)
            pthread_setspecific(key_deflate, d);
    }
    return d;
}

#ifdef HAVE_ISAL
static pthread_key_t key_isal;
static pthread_once_t isal_once = PTHREAD_ONCE_INIT;

static void make_isal_key(void)
{
    pthread_key_create(&key_isal, free);
}

/* ISA-L's inflate state is a plain struct (~85 KiB with its tables). */
static struct inflate_state *thread_isal(void)
{
    pthread_once(&isal_once, make_isal_key);
    struct inflate_state *st = pthread_getspecific(key_isal);
    if (!st) {
        st = malloc(sizeof *st);
        if (st)
            pthread_setspecific(key_isal, st);
    }
    return st;
}

/* True when ISA-L inflated @in into exactly @outlen bytes and the stream
 * ended there.  @wrapper: ISAL_DEFLATE (raw) or ISAL_ZLIB (RFC 1950, whose
 * Adler-32 it checks). */
static bool isal_exact(const void *in, size_t inlen, void *out, size_t outlen, int wrapper)
{
    struct inflate_state *st = thread_isal();
    if (!st || inlen > UINT32_MAX || outlen > UINT32_MAX)
        return false;
    isal_inflate_init(st);
    st->next_in = (uint8_t *)in;
    st->avail_in = (uint32_t)inlen;
    st->next_out = out;
    st->avail_out = (uint32_t)outlen;
    st->crc_flag = wrapper;
    return isal_inflate_stateless(st) == ISAL_DECOMP_OK && st->avail_out == 0 &&
           st->block_state == ISAL_BLOCK_FINISH;
}
#else
static bool isal_exact(const void *in, size_t inlen, void *out, size_t outlen, int wrapper)
{
    (void)in, (void)inlen, (void)out, (void)outlen, (void)wrapper;
    return false;
}
#define ISAL_DEFLATE 0
#define ISAL_ZLIB 3
#endif

static ZSTD_DCtx *thread_zstd(void)
{
    pthread_once(&keys_once, make_keys);
    ZSTD_DCtx *d = pthread_getspecific(key_zstd);
    if (!d) {
        d = ZSTD_createDCtx();
        if (d)
            pthread_setspecific(key_zstd, d);
    }
    return d;
}

/* zlib: accept a stream that fills @out, whether or not it ends there.
 * @window_bits: -15 for raw deflate, 15 for the zlib wrapper. */
static int inflate_zlib(const void *in, size_t inlen, void *out, size_t outlen, int window_bits)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, window_bits) != Z_OK)
        return -ENOMEM;
    int ret = 0;
    const uint8_t *ip = in;
    uint8_t *op = out;
    /* z_stream counts in uInt; feed in pieces so huge units cannot wrap */
    while (ret == 0) {
        if (z.avail_in == 0 && inlen > 0) {
            z.next_in = (Bytef *)ip;
            z.avail_in = (uInt)bf_min64(inlen, 1u << 30);
            ip += z.avail_in;
            inlen -= z.avail_in;
        }
        if (z.avail_out == 0 && outlen > 0) {
            z.next_out = op;
            z.avail_out = (uInt)bf_min64(outlen, 1u << 30);
            op += z.avail_out;
            outlen -= z.avail_out;
        }
        int zr = inflate(&z, Z_NO_FLUSH);
        if (z.avail_out == 0 && outlen == 0)
            break;                       /* unit full: done */
        if (zr == Z_STREAM_END || (zr != Z_OK && zr != Z_BUF_ERROR) ||
            (zr == Z_BUF_ERROR && z.avail_in == 0 && inlen == 0))
            ret = -EIO;                  /* ended short, broken, or out of input */
    }
    inflateEnd(&z);
    return ret;
}

static int inflate_deflate(const void *in, size_t inlen, void *out, size_t outlen)
{
    if (isal_exact(in, inlen, out, outlen, ISAL_DEFLATE))
        return 0;
    struct libdeflate_decompressor *d = thread_deflate();
    if (!d)
        return -ENOMEM;
    size_t used_in;
    enum libdeflate_result r =
        libdeflate_deflate_decompress_ex(d, in, inlen, out, outlen, &used_in, NULL);
    if (r == LIBDEFLATE_SUCCESS)
        return 0;
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE)
        return inflate_zlib(in, inlen, out, outlen, -15);
    return -EIO;
}

/* The same rules for deflate in a zlib (RFC 1950) wrapper, as vmdk stores it. */
static int inflate_zlib_wrapped(const void *in, size_t inlen, void *out, size_t outlen)
{
    if (isal_exact(in, inlen, out, outlen, ISAL_ZLIB))
        return 0;
    struct libdeflate_decompressor *d = thread_deflate();
    if (!d)
        return -ENOMEM;
    size_t used_in;
    enum libdeflate_result r =
        libdeflate_zlib_decompress_ex(d, in, inlen, out, outlen, &used_in, NULL);
    if (r == LIBDEFLATE_SUCCESS)
        return 0;
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE)
        return inflate_zlib(in, inlen, out, outlen, 15);
    return -EIO;
}

static int inflate_zstd(const void *in, size_t inlen, void *out, size_t outlen)
{
    ZSTD_DCtx *d = thread_zstd();
    if (!d)
        return -ENOMEM;
    /* The usual case, one frame that makes the whole unit: decode it in one
     * call, straight into @out (the streaming API goes through its own
     * window buffer, an extra copy).  The input may run on past the frame
     * (sector padding): measure the frame first. */
    size_t fsz = ZSTD_findFrameCompressedSize(in, inlen);
    unsigned long long csz = ZSTD_getFrameContentSize(in, inlen);
    if (!ZSTD_isError(fsz) && (csz == outlen || csz == ZSTD_CONTENTSIZE_UNKNOWN)) {
        size_t n = ZSTD_decompressDCtx(d, out, outlen, in, fsz);
        if (!ZSTD_isError(n) && n == outlen)
            return 0;
    }
    ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { in, inlen, 0 };
    ZSTD_outBuffer ob = { out, outlen, 0 };
    size_t zr = 1;
    while (ob.pos < ob.size) {
        size_t in_before = ib.pos, out_before = ob.pos;
        zr = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(zr))
            return -EIO;
        if (ib.pos == in_before && ob.pos == out_before)
            return -EIO;                 /* no progress: input exhausted */
    }
    /* The unit must end where a frame ends; more output means damage. */
    return zr == 0 ? 0 : -EIO;
}

int bf_decompress(enum bf_codec codec, const void *in, size_t inlen, void *out, size_t outlen)
{
    switch (codec) {
    case BF_CODEC_DEFLATE:
        return inflate_deflate(in, inlen, out, outlen);
    case BF_CODEC_ZSTD:
        return inflate_zstd(in, inlen, out, outlen);
    case BF_CODEC_ZLIB:
        return inflate_zlib_wrapped(in, inlen, out, outlen);
    }
    return -ENOTSUP;
}

const char *bf_codec_name(enum bf_codec codec)
{
    switch (codec) {
    case BF_CODEC_DEFLATE:
        return "zlib";
    case BF_CODEC_ZSTD:
        return "zstd";
    case BF_CODEC_ZLIB:
        return "zlib (RFC 1950)";
    }
    return "unknown";
}
