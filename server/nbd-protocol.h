/* nbd-protocol.h — constants of the NBD wire protocol (NetworkBlockDevice
 * doc/proto.md: fixed newstyle handshake, structured replies, metadata
 * contexts, extended headers).  All integers on the wire are big-endian.
 * Thread model: constants only.
 */
#ifndef VDISK_NBD_PROTOCOL_H
#define VDISK_NBD_PROTOCOL_H

#include <stdint.h>

/* handshake */
#define NBD_MAGIC              0x4e42444d41474943ull   /* "NBDMAGIC" */
#define NBD_IHAVEOPT           0x49484156454f5054ull   /* "IHAVEOPT" */
#define NBD_REP_MAGIC          0x0003e889045565a9ull

#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)            /* handshake flags */
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)            /* client flags */
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* options */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* option replies */
#define NBD_REP_ACK               1
#define NBD_REP_SERVER            2
#define NBD_REP_INFO              3
#define NBD_REP_META_CONTEXT      4
#define NBD_REP_ERR(n)            ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP         NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY        NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID       NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM      NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD      NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN       NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN      NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG       NBD_REP_ERR(9)
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR(10)

/* NBD_OPT_INFO / NBD_OPT_GO information types */
#define NBD_INFO_EXPORT           0
#define NBD_INFO_NAME             1
#define NBD_INFO_DESCRIPTION      2
#define NBD_INFO_BLOCK_SIZE       3

/* transmission flags */
#define NBD_FLAG_HAS_FLAGS        (1u << 0)
#define NBD_FLAG_READ_ONLY        (1u << 1)
#define NBD_FLAG_SEND_FLUSH       (1u << 2)
#define NBD_FLAG_SEND_FUA         (1u << 3)
#define NBD_FLAG_ROTATIONAL       (1u << 4)
#define NBD_FLAG_SEND_TRIM        (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF          (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN   (1u << 8)
#define NBD_FLAG_SEND_CACHE       (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO   (1u << 11)

/* requests */
#define NBD_REQUEST_MAGIC          0x25609513u
#define NBD_EXTENDED_REQUEST_MAGIC 0x21e41c71u
#define NBD_CMD_READ              0
#define NBD_CMD_WRITE             1
#define NBD_CMD_DISC              2
#define NBD_CMD_FLUSH             3
#define NBD_CMD_TRIM              4
#define NBD_CMD_CACHE             5
#define NBD_CMD_WRITE_ZEROES      6
#define NBD_CMD_BLOCK_STATUS      7

#define NBD_CMD_FLAG_FUA          (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE      (1u << 1)
#define NBD_CMD_FLAG_DF           (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE      (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO    (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN  (1u << 5)

/* replies */
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_EXTENDED_REPLY_MAGIC   0x6e8a278cu
#define NBD_REPLY_FLAG_DONE        (1u << 0)

#define NBD_REPLY_TYPE_NONE           0
#define NBD_REPLY_TYPE_OFFSET_DATA    1
#define NBD_REPLY_TYPE_OFFSET_HOLE    2
#define NBD_REPLY_TYPE_BLOCK_STATUS   5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR          ((1u << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET   ((1u << 15) | 2)

/* errors */
#define NBD_SUCCESS   0
#define NBD_EPERM     1
#define NBD_EIO       5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP   95
#define NBD_ESHUTDOWN 108

/* base:allocation states */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* our limits */
#define NBD_MAX_PAYLOAD    (32u << 20)  /* largest READ/WRITE, as qemu-nbd */
#define NBD_PREFERRED_BLOCK 4096u
#define NBD_MAX_OPTION_LEN (64u << 10)  /* longer options are answered TOO_BIG */
#define NBD_MAX_STRING     4096u        /* export names, descriptions, queries */

/* metadata context ids we hand out */
#define NBD_CTX_BASE_ALLOCATION 1u
#define NBD_CTX_ALLOCATION_DEPTH 2u

#endif
