/* partition.c — placeholder until the partition-table reader lands. */
#include "internal.h"
#include <stdio.h>
int bf_ptable_read(struct bf_image *img, unsigned sector_size, struct bf_ptable **out)
{
    (void)sector_size; (void)out;
    return bf_err(img, -ENOSYS, "partition tables are not implemented yet");
}
char *bf_guid_str(const uint8_t guid[16], char *buf) { (void)guid; buf[0] = 0; return buf; }
