/* partition.h — what the three parts of the partition-table reader share:
 * partition.c (entry point, sector-size decision, helpers), partition-mbr.c
 * (MBR and the EBR chain) and partition-gpt.c (GPT).  Nothing outside these
 * files includes it.
 *
 * Thread model: like bf_ptable_read, these run on the one thread that owns
 * the handle's open/close; they keep no state between calls.
 */
#ifndef BLOCKFMT_PARTITION_H
#define BLOCKFMT_PARTITION_H

#include "internal.h"

#define PT_MBR_SIZE      512   /* the MBR/EBR record, whatever the sector size */
#define PT_MBR_TABLE     446   /* offset of the four 16-byte entries */
#define PT_MBR_DISKSIG   440   /* 32-bit disk signature ("label-id") */
#define PT_MBR_TYPE_GPT  0xEE  /* protective entry of a GPT disk */

/* A growing list of partitions, turned into the caller's bf_ptable at the end. */
struct pt_list {
    struct bf_partition *v;
    size_t n, cap;
};

/* What a reader found; partition.c turns it into a struct bf_ptable. */
struct pt_result {
    enum bf_ptable_kind kind;
    unsigned sector_size;
    uint32_t mbr_id;           /* disk signature in sector 0 */
    uint8_t disk_guid[16];
    bool used_backup_gpt;
    struct pt_list parts;
};

/* Append a zeroed entry and point *@p at it; 0 or -ENOMEM (message set).
 * The pointer is valid until the next append. */
int pt_list_add(struct bf_image *img, struct pt_list *l, struct bf_partition **p);

/* bf_pread that prefixes the message with what was being read. */
int pt_read(struct bf_image *img, void *buf, size_t len, uint64_t off, const char *what);

/* Does the 512-byte record @rec end in the 0x55AA signature? */
static inline bool pt_has_boot_signature(const uint8_t *rec)
{
    return rec[510] == 0x55 && rec[511] == 0xAA;
}

/* The four MBR entries, decoded. */
struct pt_mbr_entry {
    uint8_t boot;      /* 0x00 or 0x80 in a real table */
    uint8_t type;
    uint32_t start;    /* sectors: from the disk start (MBR) or as the EBR says */
    uint32_t count;    /* sectors; 0 means the slot is empty */
};
void pt_mbr_entry(const uint8_t *rec, unsigned slot, struct pt_mbr_entry *e);

/* partition-mbr.c: read the MBR in @mbr (sector 0, already read, signature
 * checked, no 0xEE entry) and its EBR chains with @sector_size.  Sets
 * res->kind to BF_PTABLE_MBR, or to BF_PTABLE_NONE when the record is
 * clearly not a partition table. */
int pt_mbr_parse(struct bf_image *img, const uint8_t *mbr, unsigned sector_size,
                 struct pt_result *res);

/* partition-gpt.c: read the GPT with @sector_size (512 or 4096), or with 0
 * try both.  Fills @res with kind BF_PTABLE_GPT, or fails with -EINVAL and a
 * message when neither the primary nor the backup table is valid. */
int pt_gpt_parse(struct bf_image *img, unsigned sector_size, struct pt_result *res);

#endif
