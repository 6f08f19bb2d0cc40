/* common.c — small pieces vdisk-mount's modes share: owner/times for made-up
 * entries, error reporting from FUSE operations, partition-name parsing.
 * Thread model: view_error may run on any FUSE thread (stderr is locked by
 * stdio); the rest runs before threads exist.
 */
#include "views.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool view_verbose;

void view_owner_init(struct view_owner *o, const char *image)
{
    struct stat st;
    memset(o, 0, sizeof *o);
    o->uid = getuid();
    o->gid = getgid();
    if (image && stat(image, &st) == 0) {
        o->atime = st.st_atim;
        o->mtime = st.st_mtim;
        o->ctime = st.st_ctim;
    }
}

void view_owner_stat(const struct view_owner *o, struct stat *st)
{
    st->st_uid = o->uid;
    st->st_gid = o->gid;
    st->st_atim = o->atime;
    st->st_mtim = o->mtime;
    st->st_ctim = o->ctime;
}

int view_error(struct bf_image *img, int r)
{
    if (view_verbose)
        fprintf(stderr, "vdisk-mount: %s\n", bf_errmsg(img));
    return r;
}

int vm_parse_part(const char *s)
{
    if (!strcmp(s, "disk") || !strcmp(s, "/dev/sda") || !strcmp(s, "/dev/vda"))
        return 0;
    const char *p = s;
    if (!strncmp(p, "/dev/", 5)) {
        /* /dev/sda1, /dev/vdb2, /dev/xvda3, /dev/hda1, /dev/nbd0p1: the digits
         * at the end are the partition number */
        const char *end = p + strlen(p);
        const char *d = end;
        while (d > p && isdigit((unsigned char)d[-1]))
            d--;
        if (d == end || (d[-1] != 'p' && !isalpha((unsigned char)d[-1])))
            return -1;
        p = d;
    } else if (p[0] == 'p') {
        p++;
    }
    char *e;
    long v = strtol(p, &e, 10);
    if (e == p || *e || v < 1 || v > 4096)
        return -1;
    return (int)v;
}
