/* vdisk-mount.h — what the parts of vdisk-mount share: parsed options and
 * the entry point of each mode.  Thread model: options are fixed before any
 * thread starts.
 */
#ifndef VDISK_MOUNT_H
#define VDISK_MOUNT_H

#include "blockfmt.h"

struct vm_options {
    const char *image;
    const char *mountpoint;
    const char *format;     /* NULL: probe */
    const char *snapshot;   /* internal snapshot id or name */
};

/* -l: print what the image holds; returns the exit status. */
int vm_list(const struct vm_options *o);

#endif
