/* probe.c — which driver reads an image: by name, or by content (never by
 * file name).  Formats we recognise but cannot read yet are refused by name,
 * so that a QED image is not silently shown as raw bytes; raw is the fallback for
 * everything else.
 *
 * Thread model: pure functions over a buffer.
 */
#include "internal.h"

#include <stdio.h>
#include <strings.h>

static const struct bf_driver *const drivers[] = {
    &bf_driver_qcow2,
    &bf_driver_vmdk,
    &bf_driver_vhdx,
    &bf_driver_vpc,
    &bf_driver_vdi,
    &bf_driver_raw,
};

/* Signatures of formats other programs write that we do not read yet. */
struct foreign {
    const char *name;
    size_t off;
    const char *magic;
    size_t len;
};

static const struct foreign foreign[] = {
    { "qcow (version 1)", 0, "QFI\xfb\0\0\0\1", 8 },
    { "qed", 0, "QED\0", 4 },
    { "parallels", 0, "WithoutFreeSpace", 16 },
    { "parallels", 0, "WithouFreSpacExt", 16 },
    { "bochs", 0, "Bochs Virtual HD Image", 22 },
    { "cloop", 0, "#!/bin/sh\n#V2.0 Format", 22 },
    { "luks (encrypted)", 0, "LUKS\xba\xbe", 6 },
};

const struct bf_driver *bf_driver_by_name(const char *name)
{
    for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++)
        if (strcasecmp(drivers[i]->name, name) == 0)
            return drivers[i];
    return NULL;
}

/* Pick the driver for @head.  Returns NULL and fills @why when the content is
 * a format we know but do not read. */
const struct bf_driver *bf_probe(const uint8_t *head, size_t len, char *why, size_t whylen)
{
    const struct bf_driver *best = NULL;
    int best_score = 0;
    for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++) {
        int s = drivers[i]->probe ? drivers[i]->probe(head, len) : 0;
        if (s > best_score) {
            best_score = s;
            best = drivers[i];
        }
    }
    if (best && best_score > 1)
        return best;
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        const struct foreign *f = &foreign[i];
        if (f->off + f->len <= len && memcmp(head + f->off, f->magic, f->len) == 0) {
            snprintf(why, whylen,
                     "the image is in %s format, which is not supported yet "
                     "(open it with format raw to read its bytes as they are)", f->name);
            return NULL;
        }
    }
    return best ? best : &bf_driver_raw;
}

/* Apple disk images (UDIF) have no header: their signature is the 512-byte
 * "koly" trailer (version 4, its own size 512) at the very end of the file.
 * qemu recognises them by the ".dmg" file name, which we never look at; read
 * as raw they would show compressed chunks and a property list as a disk. */
bool bf_probe_trailer(const uint8_t *tail, size_t len, char *why, size_t whylen)
{
    if (len < 512)
        return false;
    const uint8_t *k = tail + len - 512;
    if (memcmp(k, "koly", 4) == 0 && bf_be32(k + 4) == 4 && bf_be32(k + 8) == 512) {
        snprintf(why, whylen,
                 "the image is in dmg format, which is not supported yet "
                 "(open it with format raw to read its bytes as they are)");
        return true;
    }
    return false;
}
