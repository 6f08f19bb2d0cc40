/* vhdx-crc.c — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of VHDX headers, region tables and log entries.  zlib's
 * crc32 is the other polynomial; ISA-L's crc32_iscsi is this one and is used
 * where the build has ISA-L (HAVE_ISAL), else a small table.
 *
 * Thread model: pure functions; the table is built once (pthread_once).
 */
#include "vhdx.h"

#include <stdint.h>

#ifdef HAVE_ISAL
#include <isa-l/crc.h>

/* ISA-L takes and returns the running state without the final inversion;
 * its length is an int, so feed it in pieces. */
static uint32_t crc_update(uint32_t state, const uint8_t *p, size_t len)
{
    while (len > 0) {
        size_t n = len > (1u << 30) ? (1u << 30) : len;
        state = crc32_iscsi((unsigned char *)p, (int)n, state);
        p += n;
        len -= n;
    }
    return state;
}
#else
static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void make_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

static uint32_t crc_update(uint32_t state, const uint8_t *p, size_t len)
{
    pthread_once(&table_once, make_table);
    for (size_t i = 0; i < len; i++)
        state = table[(state ^ p[i]) & 0xff] ^ (state >> 8);
    return state;
}
#endif

uint32_t vhdx_crc32c(const void *buf, size_t len, size_t skip)
{
    static const uint8_t zero4[4];
    const uint8_t *p = buf;
    uint32_t s = 0xffffffffu;
    if (skip < len && len - skip >= 4) {
        s = crc_update(s, p, skip);
        s = crc_update(s, zero4, 4);
        s = crc_update(s, p + skip + 4, len - skip - 4);
    } else {
        s = crc_update(s, p, len);
    }
    return ~s;
}
