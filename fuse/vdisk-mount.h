/* vdisk-mount.h — what the parts of vdisk-mount share: parsed options, the
 * view being mounted, and each mode's entry point.
 *
 * Thread model: options and the view's structure are fixed before the FUSE
 * loop starts; FUSE then calls the operations from many threads, which only
 * read that structure (the image library and fsview lock what they change).
 */
#ifndef VDISK_MOUNT_H
#define VDISK_MOUNT_H

#include "blockfmt.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VM_MAX_FS 64

struct vm_fs_request {
    const char *part;        /* "p1", "1", "/dev/sda1" */
    const char *dir;         /* where inside the mount point, "/" by default */
};

struct vm_options {
    const char *image;
    const char *mountpoint;
    const char *format;      /* NULL: probe */
    const char *snapshot;    /* internal snapshot id or name (read-only) */
    const char *pid_file;
    const char *fuse_opts;   /* -o, comma-joined */
    struct vm_fs_request fs[VM_MAX_FS];   /* -m */
    unsigned nfs;
    bool all;                /* --all: every recognised file system */
    bool rw;                 /* --rw: disk view writable */
    bool overlay;            /* -s: writes to a throwaway overlay */
    bool foreground;         /* -f */
    bool json;               /* -l --json */
    bool verbose;
    bool force_share;        /* take no image locks */
    unsigned retries;        /* -u --retry */
};

/* list.c: -l; returns the exit status. */
int vm_list(const struct vm_options *o);
/* mount.c: IMAGE MOUNTPOINT; returns the exit status. */
int vm_mount(const struct vm_options *o);
/* unmount.c: -u; 0 unmounted, 1 error, 2 still busy, 3 not mounted. */
int vm_unmount(const char *mountpoint, unsigned retries);

/* Partition number named by @s ("p1", "1", "/dev/sda1", "/dev/vda1",
 * "/dev/nbd0p1"); -1 if it names none. */
int vm_parse_part(const char *s);

#endif
