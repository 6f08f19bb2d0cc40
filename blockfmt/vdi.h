/* vdi.h — what the VDI driver's files share: header layout constants and
 * the parent lookup of differencing images (vdi-parent.c).
 *
 * Thread model: constants and open-time functions only.
 */
#ifndef BLOCKFMT_VDI_H
#define BLOCKFMT_VDI_H

#include <stdint.h>

#define VDI_SIGNATURE     0xbeda107fu
#define VDI_HEADER_BYTES  512u          /* what qemu reads: the pre-header and header */

/* header fields (little-endian) */
#define VDI_H_SIGNATURE     0x40
#define VDI_H_VERSION       0x44
#define VDI_H_IMAGE_TYPE    0x4c
#define VDI_H_OFFSET_BMAP   0x154
#define VDI_H_OFFSET_DATA   0x158
#define VDI_H_SECTOR_SIZE   0x168
#define VDI_H_DISK_SIZE     0x170
#define VDI_H_BLOCK_SIZE    0x178
#define VDI_H_BLOCK_EXTRA   0x17c
#define VDI_H_BLOCKS        0x180
#define VDI_H_UUID_CREATE   0x188   /* this image */
#define VDI_H_UUID_MODIFY   0x198   /* its last modification */
#define VDI_H_UUID_LINKAGE  0x1a8   /* differencing: the parent's UUID_CREATE */
#define VDI_H_UUID_PARENT_MODIFY 0x1b8  /* differencing: the parent's UUID_MODIFY then */

struct bf_image;

/* "01234567-89ab-..." as VirtualBox shows the UUID at @u. */
void bf_vdi_uuid_str(const uint8_t *u, char out[37]);

/* Find the .vdi whose creation UUID is @uuid beside @img or in the folder
 * above and open it as @img's backing image; *parent_name (owned by the
 * caller) is its name relative to @img's folder.  With BF_OPEN_NO_BACKING
 * nothing is looked for and *parent_name stays NULL. */
int bf_vdi_open_parent(struct bf_image *img, const uint8_t *uuid, char **parent_name);

#endif
