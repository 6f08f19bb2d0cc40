/* fsview-tsk.c — The Sleuth Kit over the image library: an external
 * TSK_IMG_INFO whose reads go to bf_pread, and the translation of libtsk's
 * metadata into what stat() shows.
 *
 * Choices where the file system has no answer:
 *  - FAT, exFAT and NTFS keep no Unix owner or permissions: directories show
 *    0755, other files 0644, owned by the user who mounted (as the kernel's
 *    vfat/exfat/ntfs3 do by default).  ISO 9660 without Rock Ridge (all
 *    permission bits zero) gets the same.
 *  - FAT and exFAT keep no change time: ctime shows the modification time.
 *  - ISO 9660: libtsk gives the directory record's recording date as the
 *    creation time only; it is shown as atime, mtime and ctime (as Linux's
 *    isofs does without Rock Ridge).
 *  - Device numbers are shown for ext2/3/4 (decoded from the inode as Linux
 *    does); other file systems show 0.
 *
 * Thread model: fsv_tsk_image's read callback runs under libtsk's image
 * cache lock (and our tsk lock); bf_pread is thread-safe anyway.  The rest
 * are pure functions of their arguments.
 */
#include "fsview-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

/* ------------------------------------------------------------ the image */

struct fsv_img {
    TSK_IMG_INFO info;           /* must come first: libtsk casts */
    struct bf_image *img;
};

static ssize_t img_read(TSK_IMG_INFO *ii, TSK_OFF_T off, char *buf, size_t len)
{
    struct fsv_img *fi = (struct fsv_img *)ii;
    uint64_t size = bf_size(fi->img);
    if (off < 0) {
        tsk_error_reset();
        tsk_error_set_errno(TSK_ERR_IMG_READ_OFF);
        tsk_error_set_errstr("negative offset %" PRIdOFF, off);
        return -1;
    }
    if ((uint64_t)off >= size)
        return 0;
    if (len > size - (uint64_t)off)
        len = (size_t)(size - (uint64_t)off);    /* libtsk asks past the end */
    if (len > SSIZE_MAX)
        len = SSIZE_MAX;
    int r = bf_pread(fi->img, buf, len, (uint64_t)off);
    if (r < 0) {
        tsk_error_reset();
        tsk_error_set_errno(TSK_ERR_IMG_READ);
        tsk_error_set_errstr("%s", bf_errmsg(fi->img));
        return -1;
    }
    return (ssize_t)len;
}

static void img_close(TSK_IMG_INFO *ii)
{
    free(ii);            /* tsk_img_close has released the cache lock */
}

static void img_stat(TSK_IMG_INFO *ii, FILE *f)
{
    (void)ii;
    fprintf(f, "vdisk image\n");
}

TSK_IMG_INFO *fsv_tsk_image(struct bf_image *img)
{
    /* Zeroed: libtsk's block cache (cache_len[]) must start empty. */
    struct fsv_img *fi = calloc(1, sizeof *fi);
    if (!fi)
        return NULL;
    fi->img = img;
    uint64_t size = bf_size(img);
    if (size > INT64_MAX)
        size = INT64_MAX;
    TSK_IMG_INFO *ii = tsk_img_open_external(fi, (TSK_OFF_T)size, 512, img_read, img_close,
                                             img_stat);
    if (!ii)
        free(fi);
    return ii;
}

const char *fsv_tsk_error(char *buf, size_t len)
{
    const char *e = tsk_error_get();
    snprintf(buf, len, "%s", e && *e ? e : "unknown libtsk error");
    for (char *p = buf; *p; p++)       /* libtsk's messages span lines */
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return buf;
}

/* ---------------------------------------------------------------- types */

void fsv_set_type(struct fsview *fs)
{
    TSK_FS_TYPE_ENUM t = fs->tf->ftype;
    const char *name = NULL;
    fs->kind = FSV_OTHER;
    if (t == TSK_FS_TYPE_EXT2 || t == TSK_FS_TYPE_EXT3 || t == TSK_FS_TYPE_EXT4) {
        fs->kind = FSV_EXT;
        name = t == TSK_FS_TYPE_EXT2 ? "ext2" : t == TSK_FS_TYPE_EXT3 ? "ext3" : "ext4";
    } else if (t == TSK_FS_TYPE_FAT12 || t == TSK_FS_TYPE_FAT16 || t == TSK_FS_TYPE_FAT32) {
        fs->kind = FSV_FAT;
        name = t == TSK_FS_TYPE_FAT12 ? "fat12" : t == TSK_FS_TYPE_FAT16 ? "fat16" : "fat32";
    } else if (t == TSK_FS_TYPE_EXFAT) {
        fs->kind = FSV_EXFAT;
        name = "exfat";
    } else if (t == TSK_FS_TYPE_NTFS) {
        fs->kind = FSV_NTFS;
        name = "ntfs";
    } else if (t == TSK_FS_TYPE_HFS) {
        fs->kind = FSV_HFS;
        name = "hfs+";
    } else if (t == TSK_FS_TYPE_ISO9660) {
        fs->kind = FSV_ISO;
        name = "iso9660";
    }
    if (name) {
        snprintf(fs->type, sizeof fs->type, "%s", name);
        return;
    }
    const char *tn = tsk_fs_type_toname(t);
    snprintf(fs->type, sizeof fs->type, "%s", tn ? tn : "unknown");
    for (char *p = fs->type; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}

/* ----------------------------------------------------------------- stat */

static mode_t type_bits(TSK_FS_META_TYPE_ENUM mt, TSK_FS_NAME_TYPE_ENUM nt)
{
    switch (mt) {
    case TSK_FS_META_TYPE_REG: return S_IFREG;
    case TSK_FS_META_TYPE_DIR: return S_IFDIR;
    case TSK_FS_META_TYPE_FIFO: return S_IFIFO;
    case TSK_FS_META_TYPE_CHR: return S_IFCHR;
    case TSK_FS_META_TYPE_BLK: return S_IFBLK;
    case TSK_FS_META_TYPE_LNK: return S_IFLNK;
    case TSK_FS_META_TYPE_SOCK: return S_IFSOCK;
    case TSK_FS_META_TYPE_UNDEF: break;
    default: return 0;                       /* virtual, whiteout, shadow */
    }
    switch (nt) {
    case TSK_FS_NAME_TYPE_REG: return S_IFREG;
    case TSK_FS_NAME_TYPE_DIR: return S_IFDIR;
    case TSK_FS_NAME_TYPE_FIFO: return S_IFIFO;
    case TSK_FS_NAME_TYPE_CHR: return S_IFCHR;
    case TSK_FS_NAME_TYPE_BLK: return S_IFBLK;
    case TSK_FS_NAME_TYPE_LNK: return S_IFLNK;
    case TSK_FS_NAME_TYPE_SOCK: return S_IFSOCK;
    default: return 0;
    }
}

static struct timespec ts(time_t s, uint64_t ns)
{
    return (struct timespec){ .tv_sec = s, .tv_nsec = ns < 1000000000u ? (long)ns : 0 };
}

/* ext2/3/4 device numbers: i_block[0] holds the old 8:8 encoding, else
 * i_block[1] the new one (Linux's old_decode_dev / new_decode_dev). */
static dev_t ext_rdev(const TSK_FS_META *m)
{
    if (m->content_type != TSK_FS_META_CONTENT_TYPE_DEFAULT || !m->content_ptr ||
        m->content_len < 2 * sizeof(TSK_DADDR_T))
        return 0;
    const TSK_DADDR_T *b = m->content_ptr;
    uint32_t b0 = (uint32_t)b[0], b1 = (uint32_t)b[1];
    if (b0)
        return makedev((b0 >> 8) & 0xff, b0 & 0xff);
    return makedev((b1 & 0xfff00) >> 8, (b1 & 0xff) | ((b1 >> 12) & 0xfff00));
}

bool fsv_meta_stat(const struct fsview *fs, const TSK_FS_META *m, TSK_FS_NAME_TYPE_ENUM nt,
                   struct stat *st)
{
    memset(st, 0, sizeof *st);
    mode_t type = type_bits(m->type, nt);
    if (!type)
        return false;
    mode_t perm = (mode_t)m->mode & 07777;
    bool owners = fs->kind == FSV_EXT || fs->kind == FSV_HFS || fs->kind == FSV_OTHER ||
                  (fs->kind == FSV_ISO && perm != 0);
    if (!owners)
        perm = type == S_IFDIR ? 0755 : 0644;
    st->st_mode = type | perm;
    st->st_ino = (ino_t)m->addr;
    st->st_nlink = m->nlink > 0 ? (nlink_t)m->nlink : 1;
    st->st_uid = owners ? (uid_t)m->uid : fs->uid;
    st->st_gid = owners ? (gid_t)m->gid : fs->gid;
    st->st_size = m->size > 0 ? m->size : 0;
    if (type == S_IFLNK && m->link) {
        size_t l = strnlen(m->link, FSV_LINK_MAX + 1);
        st->st_size = (off_t)(l > FSV_LINK_MAX ? FSV_LINK_MAX : l);
    }
    if (type == S_IFCHR || type == S_IFBLK) {
        st->st_size = 0;
        if (fs->kind == FSV_EXT)
            st->st_rdev = ext_rdev(m);
    }
    st->st_blksize = fs->tf->block_size >= 512 && fs->tf->block_size <= (1u << 20)
                         ? (blksize_t)fs->tf->block_size : 4096;
    st->st_blocks = (st->st_size + 511) / 512;
    st->st_atim = ts(m->atime, m->atime_nano);
    st->st_mtim = ts(m->mtime, m->mtime_nano);
    st->st_ctim = ts(m->ctime, m->ctime_nano);
    if ((fs->kind == FSV_FAT || fs->kind == FSV_EXFAT) && m->ctime == 0)
        st->st_ctim = st->st_mtim;
    if (fs->kind == FSV_ISO && m->mtime == 0 && m->atime == 0 && m->ctime == 0)
        st->st_atim = st->st_mtim = st->st_ctim = ts(m->crtime, m->crtime_nano);
    if (fs->kind == FSV_EXT)
        fsv_ext_times(fs, st);
    return true;
}

/* ------------------------------------------------------------- filters */

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !memcmp(s + a - b, suffix, b);
}

bool fsv_hidden(const struct fsview *fs, const struct fsv_node *dir, const char *name,
                TSK_INUM_T addr)
{
    bool root = dir == fs->root;
    switch (fs->kind) {
    case FSV_NTFS:
        /* $MFT ... $Extend and the reserved entries: MFT records 0-15 (as
         * ntfs-3g and Windows hide them); the root itself is record 5 */
        return addr < 16;
    case FSV_HFS:
        /* catalog node ids below 16 are the volume's special files; the two
         * private directories hold hard-link targets */
        return addr < 16 ||
               (root && (!strcmp(name, "^^^^HFS+ Private Data") ||
                         !strncmp(name, ".HFS+ Private Directory Data", 28)));
    case FSV_FAT:
        /* libtsk shows the volume label as a file in the root */
        return root && ends_with(name, " (Volume Label Entry)");
    case FSV_EXFAT:
        /* ... and exFAT's bitmap, up-case table, label and GUID entries */
        return root && (ends_with(name, " (Volume Label Entry)") ||
                        !strcmp(name, "$ALLOC_BITMAP") || !strcmp(name, "$UPCASE_TABLE") ||
                        !strcmp(name, "$TEX_FAT") || !strcmp(name, "$VOLUME_GUID") ||
                        !strcmp(name, "$EMPTY_VOLUME_LABEL") ||
                        !strcmp(name, "$ACCESS_CONTROL_TABLE"));
    default:
        return false;
    }
}

/* --------------------------------------------------------------- data */

const TSK_FS_ATTR *fsv_data_attr(const struct fsview *fs, TSK_FS_FILE *f)
{
    if (fs->kind == FSV_NTFS) {
        int n = tsk_fs_file_attr_getsize(f);
        for (int i = 0; i < n; i++) {
            const TSK_FS_ATTR *a = tsk_fs_file_attr_get_idx(f, i);
            if (a && a->type == TSK_FS_ATTR_TYPE_NTFS_DATA &&
                (!a->name || !a->name[0] || !strcmp(a->name, "$Data")))
                return a;
        }
        tsk_error_reset();
        return NULL;                 /* no unnamed stream: an empty file */
    }
    const TSK_FS_ATTR *a = tsk_fs_file_attr_get(f);
    if (!a)
        tsk_error_reset();
    return a;
}
