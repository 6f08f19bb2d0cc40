/* vmdk-descriptor.c — the vmdk text descriptor: "key=value" lines (CID,
 * parentCID, createType, parentFileNameHint, ddb.* which we do not need)
 * and extent lines
 *
 *     ACCESS SECTORS TYPE ["FILE" [OFFSET]]
 *
 * as VMware's Virtual Disk Format 1.1/5.0 notes describe them.  The text
 * comes from the image, so every line is bounded, every number checked, and
 * a line that starts like an extent line but does not parse is an error
 * rather than something to skip: skipping it would give a disk with a piece
 * missing.  Unknown keys and other lines are ignored, as VMware does.
 *
 * Thread model: pure functions over a buffer, used during open.
 */
#include "vmdk.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

static const struct {
    const char *name;
    enum vmdk_etype type;
} etypes[] = {
    { "FLAT", VMDK_ET_FLAT },
    { "VMFS", VMDK_ET_VMFS },
    { "SPARSE", VMDK_ET_SPARSE },
    { "VMFSSPARSE", VMDK_ET_VMFSSPARSE },
    { "SESPARSE", VMDK_ET_SESPARSE },
    { "ZERO", VMDK_ET_ZERO },
};

const char *vmdk_etype_name(enum vmdk_etype t)
{
    for (size_t i = 0; i < sizeof etypes / sizeof etypes[0]; i++)
        if (etypes[i].type == t)
            return etypes[i].name;
    return "?";
}

void vmdk_desc_free(struct vmdk_desc *d)
{
    free(d->create_type);
    free(d->parent_hint);
    for (size_t i = 0; i < d->n_ext; i++)
        free(d->ext[i].file);
    free(d->ext);
    memset(d, 0, sizeof *d);
}

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

/* A printable copy of a line for messages (control bytes shown as '?'). */
static void show_line(char *out, size_t outlen, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < outlen; i++)
        out[k++] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (n > 0 && k + 4 >= outlen) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = 0;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* Parse an unsigned decimal of at most 20 digits; false on anything else. */
static bool parse_dec(const char **pp, const char *end, uint64_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    if (p >= end || *p < '0' || *p > '9')
        return false;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v))
            return false;
    }
    *pp = p;
    *out = v;
    return true;
}

static bool parse_hex32(const char *s, size_t n, uint32_t *out)
{
    if (n == 0 || n > 8)
        return false;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

static bool has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

static int bad_line(struct bf_image *img, const char *where, unsigned lineno, const char *s,
                    size_t n, const char *why)
{
    char shown[160];
    show_line(shown, sizeof shown, s, n);
    return bf_err(img, -EINVAL, "%s: invalid extent line %u (%s): %s", where, lineno, why, shown);
}

/* Parse one extent line [s, s+n) (already trimmed); @p points after the
 * access word. */
static int parse_extent(struct bf_image *img, const char *where, unsigned lineno, const char *s,
                        size_t n, enum vmdk_access access, const char *p, struct vmdk_desc *d)
{
    const char *end = s + n;
    struct vmdk_desc_extent x = { .access = access, .line = lineno };

    while (p < end && is_blank(*p))
        p++;
    if (!parse_dec(&p, end, &x.sectors) || (p < end && !is_blank(*p)))
        return bad_line(img, where, lineno, s, n, "the size is not a number");
    if (x.sectors > VMDK_MAX_SECTORS)
        return bad_line(img, where, lineno, s, n, "the size is too large");
    while (p < end && is_blank(*p))
        p++;
    const char *t = p;
    while (p < end && !is_blank(*p) && *p != '"')
        p++;
    size_t tlen = (size_t)(p - t);
    bool known = false;
    for (size_t i = 0; i < sizeof etypes / sizeof etypes[0]; i++)
        if (strlen(etypes[i].name) == tlen && memcmp(etypes[i].name, t, tlen) == 0) {
            x.type = etypes[i].type;
            known = true;
        }
    if (!known) {
        char shown[64];
        show_line(shown, sizeof shown, t, tlen);
        bool rdm = (tlen == 7 && !memcmp(t, "VMFSRDM", 7)) || (tlen == 7 && !memcmp(t, "VMFSRAW", 7));
        return bf_err(img, -ENOTSUP, "%s: line %u: %s extent type '%s' is not supported "
                      "(FLAT, SPARSE, VMFS, VMFSSPARSE, SESPARSE and ZERO are)", where, lineno,
                      rdm ? "raw device mapping" : tlen ? "unknown" : "missing", shown);
    }

    while (p < end && is_blank(*p))
        p++;
    if (p < end && *p == '"') {
        const char *f = ++p;
        while (p < end && *p != '"')
            p++;
        if (p >= end)
            return bad_line(img, where, lineno, s, n, "the file name has no closing quote");
        size_t flen = (size_t)(p - f);
        p++;
        if (flen == 0)
            return bad_line(img, where, lineno, s, n, "the file name is empty");
        if (flen > VMDK_MAX_NAME || has_control(f, flen))
            return bad_line(img, where, lineno, s, n, "the file name is too long or holds "
                            "control characters");
        if (x.type != VMDK_ET_ZERO && !(x.file = dup_n(f, flen)))
            return bf_err(img, -ENOMEM, "out of memory");
        while (p < end && is_blank(*p))
            p++;
        if (p < end) {
            if (x.type != VMDK_ET_FLAT && x.type != VMDK_ET_VMFS) {
                free(x.file);
                return bad_line(img, where, lineno, s, n, "only flat extents take an offset");
            }
            if (!parse_dec(&p, end, &x.offset) || x.offset > VMDK_MAX_SECTORS) {
                free(x.file);
                return bad_line(img, where, lineno, s, n, "the offset is not a number");
            }
            while (p < end && is_blank(*p))
                p++;
            if (p < end) {
                free(x.file);
                return bad_line(img, where, lineno, s, n, "unexpected text after the offset");
            }
        }
    } else if (p < end) {
        return bad_line(img, where, lineno, s, n, "the file name must be in double quotes");
    } else if (x.type != VMDK_ET_ZERO) {
        return bad_line(img, where, lineno, s, n, "no file name");
    }

    if (d->n_ext >= VMDK_MAX_EXTENTS) {
        free(x.file);
        return bf_err(img, -EFBIG, "%s: more than %u extents", where, VMDK_MAX_EXTENTS);
    }
    struct vmdk_desc_extent *ne = realloc(d->ext, (d->n_ext + 1) * sizeof *ne);
    if (!ne) {
        free(x.file);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    d->ext = ne;
    d->ext[d->n_ext++] = x;
    return 0;
}

/* Store a string value the first time its key is seen (qemu also takes the
 * first occurrence). */
static int set_string(struct bf_image *img, const char *where, unsigned lineno, char **dst,
                      const char *key, const char *v, size_t vn)
{
    if (*dst)
        return 0;
    if (vn > VMDK_MAX_NAME || has_control(v, vn))
        return bf_err(img, -EINVAL, "%s: line %u: the value of %s is too long or holds "
                      "control characters", where, lineno, key);
    if (!(*dst = dup_n(v, vn)))
        return bf_err(img, -ENOMEM, "out of memory");
    return 0;
}

static int parse_keyvalue(struct bf_image *img, const char *where, unsigned lineno,
                          const char *s, size_t n, const char *eq, struct vmdk_desc *d)
{
    const char *k = s, *ke = eq;
    while (ke > k && is_blank(ke[-1]))
        ke--;
    const char *v = eq + 1, *ve = s + n;
    while (v < ve && is_blank(*v))
        v++;
    if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
        v++;
        ve--;
    }
    size_t kn = (size_t)(ke - k), vn = (size_t)(ve - v);
#define KEY_IS(lit) (kn == sizeof(lit) - 1 && memcmp(k, lit, kn) == 0)
    if (KEY_IS("CID") || KEY_IS("parentCID")) {
        bool parent = kn == 9;
        uint32_t *dst = parent ? &d->parent_cid : &d->cid;
        bool *has = parent ? &d->has_parent_cid : &d->has_cid;
        if (*has)
            return 0;
        if (!parse_hex32(v, vn, dst)) {
            char shown[64];
            show_line(shown, sizeof shown, v, vn);
            return bf_err(img, -EINVAL, "%s: line %u: %s '%s' is not a 32-bit hexadecimal "
                          "number", where, lineno, parent ? "parentCID" : "CID", shown);
        }
        *has = true;
        return 0;
    }
    if (KEY_IS("createType"))
        return set_string(img, where, lineno, &d->create_type, "createType", v, vn);
    if (KEY_IS("parentFileNameHint")) {
        if (vn == 0)
            return 0;     /* an empty hint names no parent */
        return set_string(img, where, lineno, &d->parent_hint, "parentFileNameHint", v, vn);
    }
#undef KEY_IS
    return 0;
}

int vmdk_desc_parse(struct bf_image *img, const char *where, const char *text, size_t len,
                    struct vmdk_desc *d)
{
    memset(d, 0, sizeof *d);
    const char *nul = memchr(text, 0, len);
    const char *end = nul ? nul : text + len;
    unsigned lineno = 0;
    for (const char *s = text; s < end;) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *le = nl ? nl : end;
        lineno++;
        if ((size_t)(le - s) > VMDK_MAX_LINE)
            return bf_err(img, -EINVAL, "%s: descriptor line %u is longer than %u bytes",
                          where, lineno, VMDK_MAX_LINE);
        const char *next = nl ? nl + 1 : end;
        while (s < le && is_blank(*s))
            s++;
        while (le > s && (is_blank(le[-1]) || le[-1] == '\r'))
            le--;
        size_t n = (size_t)(le - s);
        if (n == 0 || *s == '#') {
            s = next;
            continue;
        }
        /* first word */
        const char *w = s;
        while (w < le && !is_blank(*w) && *w != '=')
            w++;
        size_t wn = (size_t)(w - s);
        enum vmdk_access acc = VMDK_RW;
        bool is_ext = true;
        if (wn == 2 && !memcmp(s, "RW", 2))
            acc = VMDK_RW;
        else if (wn == 6 && !memcmp(s, "RDONLY", 6))
            acc = VMDK_RDONLY;
        else if (wn == 8 && !memcmp(s, "NOACCESS", 8))
            acc = VMDK_NOACCESS;
        else
            is_ext = false;
        int r = 0;
        if (is_ext && w < le && is_blank(*w)) {
            r = parse_extent(img, where, lineno, s, n, acc, w, d);
        } else {
            const char *eq = memchr(s, '=', n);
            if (eq)
                r = parse_keyvalue(img, where, lineno, s, n, eq, d);
        }
        if (r < 0)
            return r;
        s = next;
    }
    return 0;
}

/* qemu's rule: after comment and blank lines comes "version=1", 2 or 3.
 * VMware's descriptors also always begin with "# Disk DescriptorFile". */
bool vmdk_desc_probe(const uint8_t *head, size_t len)
{
    static const char sig[] = "# Disk DescriptorFile";
    if (len >= sizeof sig - 1 && strncasecmp((const char *)head, sig, sizeof sig - 1) == 0)
        return true;
    const char *p = (const char *)head, *end = p + len;
    while (p < end) {
        if (*p == '#') {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl)
                return false;
            p = nl + 1;
            continue;
        }
        const char *q = p;
        while (q < end && (is_blank(*q) || *q == '\r'))
            q++;
        if (q < end && *q == '\n') {
            p = q + 1;
            continue;
        }
        if (end - p < 10 || memcmp(p, "version=", 8) != 0 || p[8] < '1' || p[8] > '3')
            return false;
        q = p + 9;
        while (q < end && (is_blank(*q) || *q == '\r'))
            q++;
        return q < end && *q == '\n';
    }
    return false;
}
