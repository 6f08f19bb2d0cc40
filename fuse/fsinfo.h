/* fsinfo.h — recognise the file system at the start of an image (a
 * partition slice or a whole disk) and read its label and UUID from its
 * superblock, as blkid shows them, for `vdisk-mount -l`.
 *
 * Thread model: none; one call reads through bf_pread (thread-safe).
 */
#ifndef VDISK_FSINFO_H
#define VDISK_FSINFO_H

#include "blockfmt.h"

struct fsinfo {
    char type[16];    /* "ext4", "fat32", "exfat", "ntfs", "hfs+", "iso9660", "swap" */
    char label[256];  /* UTF-8, "" when the file system has none */
    char uuid[64];    /* as blkid prints it, "" when none */
};

/* 0 when a file system was recognised, -ENOENT when none was, another
 * -errno when the image could not be read. */
int fsinfo_probe(struct bf_image *img, struct fsinfo *out);

#endif
