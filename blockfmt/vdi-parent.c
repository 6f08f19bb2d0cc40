/* vdi-parent.c — finding the parent of a differencing VDI.  VirtualBox
 * names a differencing image's parent only by UUID (the header's linkage
 * UUID is the parent's creation UUID) and finds the file through its media
 * registry (the .vbox file), which an image taken out of its VM does not
 * carry.  VirtualBox keeps a VM's snapshot images in its Snapshots/ folder
 * and the base disk in the VM folder above it, so the parent is looked for
 * among the .vdi files beside the child and in the folder above, nearest
 * first and in name order within a folder, so that the choice never
 * depends on directory order.  qemu does not read differencing VDIs at all.
 *
 * Thread model: called once, from vdi_open.
 */
#include "internal.h"
#include "vdi.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

void bf_vdi_uuid_str(const uint8_t *u, char out[37])
{
    /* VirtualBox writes the first three fields little-endian */
    snprintf(out, 37, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", bf_le32(u),
             bf_le16(u + 4), bf_le16(u + 6), u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
}

static int is_vdi_name(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return n > 4 && strcasecmp(d->d_name + n - 4, ".vdi") == 0;
}

/* Is @path a VDI whose creation UUID is @uuid, and not the file @self? */
static bool is_parent(const char *path, const uint8_t *uuid, const struct stat *self)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    uint8_t h[VDI_HEADER_BYTES];
    struct stat st;
    bool yes = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
               !(st.st_dev == self->st_dev && st.st_ino == self->st_ino) &&
               pread(fd, h, sizeof h, 0) == (ssize_t)sizeof h &&
               bf_le32(h + VDI_H_SIGNATURE) == VDI_SIGNATURE &&
               memcmp(h + VDI_H_UUID_CREATE, uuid, 16) == 0;
    close(fd);
    return yes;
}

/* Look in the folder @prefix ("" or "../", relative to the child's) for the
 * parent; on a match, *name is its name relative to the child's folder. */
static int search_folder(struct bf_image *img, const char *prefix, const uint8_t *uuid,
                         const struct stat *self, char **name)
{
    char *dir = bf_path_relative_to(img->filename, *prefix ? prefix : ".");
    if (!dir)
        return -ENOMEM;
    struct dirent **list = NULL;
    int n = scandir(dir, &list, is_vdi_name, alphasort);
    int r = 0;
    for (int i = 0; i < n; i++) {
        if (r == 0 && !*name) {
            char *rel = NULL, *path = NULL;
            if (asprintf(&rel, "%s%s", prefix, list[i]->d_name) < 0)
                rel = NULL;
            path = rel ? bf_path_relative_to(img->filename, rel) : NULL;
            if (!path)
                r = -ENOMEM;
            else if (is_parent(path, uuid, self))
                *name = rel, rel = NULL;
            free(path);
            free(rel);
        }
        free(list[i]);
    }
    free(list);
    free(dir);
    return r;
}

int bf_vdi_open_parent(struct bf_image *img, const uint8_t *uuid, char **parent_name)
{
    char us[37];
    bf_vdi_uuid_str(uuid, us);
    *parent_name = NULL;
    if (img->open_flags & BF_OPEN_NO_BACKING)
        return 0;
    if (bf_is_nbd_uri(img->filename))
        return bf_err(img, -ENOTSUP, "%s: a differencing VDI opened by NBD URI: there is no "
                      "folder to look for its parent {%s} in", img->filename, us);
    struct stat self;
    if (stat(img->filename, &self) < 0)
        return bf_err(img, -errno, "%s: %s", img->filename, strerror(errno));
    char *name = NULL;
    int r = search_folder(img, "", uuid, &self, &name);
    if (r == 0 && !name)
        r = search_folder(img, "../", uuid, &self, &name);
    if (r < 0)
        return bf_err(img, r, "out of memory");
    if (!name) {
        const char *slash = strrchr(img->filename, '/');
        int dirlen = slash ? (int)(slash - img->filename) : 1;
        return bf_err(img, -ENOENT, "%s: this differencing VDI's parent {%s} is not among the "
                      ".vdi files in %.*s or the folder above it (VirtualBox keeps snapshots in "
                      "the VM's Snapshots folder and the base disk in the VM folder: copy them "
                      "together)", img->filename, us, dirlen, slash ? img->filename : ".");
    }
    r = bf_open_backing(img, name, "vdi");
    if (r < 0) {
        free(name);
        return r;
    }
    *parent_name = name;
    return 0;
}
