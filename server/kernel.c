/* kernel.c — talking to the Linux nbd driver: load the module, connect
 * sockets to a device, disconnect it, ask whether it is connected.  The
 * generic-netlink family "nbd" (include/uapi/linux/nbd-netlink.h, through
 * libnl-genl-3) is used where the kernel has it; otherwise the old ioctl
 * interface, where one thread must sit in NBD_DO_IT for the device's life.
 *
 * Thread model: each function is self-contained (its own netlink socket or
 * device descriptor); kernel_ioctl_run blocks its calling thread.
 */
#include "kernel.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/nbd-netlink.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* linux/nbd.h ioctls (its flag macros clash with ours, so not included) */
#define NBD_IOC_SET_SOCK        _IO(0xab, 0)
#define NBD_IOC_SET_BLKSIZE     _IO(0xab, 1)
#define NBD_IOC_DO_IT           _IO(0xab, 3)
#define NBD_IOC_CLEAR_SOCK      _IO(0xab, 4)
#define NBD_IOC_CLEAR_QUE       _IO(0xab, 5)
#define NBD_IOC_SET_SIZE_BLOCKS _IO(0xab, 7)
#define NBD_IOC_DISCONNECT      _IO(0xab, 8)
#define NBD_IOC_SET_TIMEOUT     _IO(0xab, 9)
#define NBD_IOC_SET_FLAGS       _IO(0xab, 10)

/* ---------------------------------------------------------------- module */

int kernel_load_module(char *err, size_t errlen)
{
    if (access("/sys/module/nbd", F_OK) == 0)
        return 0;
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "cannot run modprobe: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 1);
        execlp("modprobe", "modprobe", "nbd", "nbds_max=16", "max_part=16", (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (access("/sys/module/nbd", F_OK) == 0)
        return 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        snprintf(err, errlen, "the nbd kernel module is not loaded and modprobe was not found");
    else
        snprintf(err, errlen, "cannot load the nbd kernel module ('modprobe nbd' failed%s); "
                 "this kernel may have no NBD support",
                 WIFEXITED(st) ? "" : " with a signal");
    return -1;
}

int kernel_max_part(void)
{
    FILE *f = fopen("/sys/module/nbd/parameters/max_part", "r");
    int v = -1;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

/* ---------------------------------------------------------------- netlink */

struct genl_nbd {
    struct nl_sock *sk;
    int family;
};

static int genl_nbd_open(struct genl_nbd *n)
{
    n->sk = nl_socket_alloc();
    if (!n->sk)
        return -ENOMEM;
    if (genl_connect(n->sk) < 0) {
        nl_socket_free(n->sk);
        return -ENOTSUP;
    }
    n->family = genl_ctrl_resolve(n->sk, NBD_GENL_FAMILY_NAME);
    if (n->family < 0) {
        nl_socket_free(n->sk);
        return -ENOTSUP;          /* no "nbd" family: old kernel, use ioctls */
    }
    return 0;
}

static void genl_nbd_close(struct genl_nbd *n)
{
    nl_socket_free(n->sk);
}

bool kernel_has_netlink(void)
{
    if (getenv("VDISK_NBD_NO_NETLINK"))   /* lets the tests exercise the ioctl path */
        return false;
    struct genl_nbd n;
    if (genl_nbd_open(&n) < 0)
        return false;
    genl_nbd_close(&n);
    return true;
}

/* libnl turns kernel errnos into its own codes; map the common ones back. */
static int from_nlerr(int e)
{
    switch (-e) {
    case NLE_BUSY: return -EBUSY;
    case NLE_INVAL: return -EINVAL;
    case NLE_PERM: return -EPERM;
    case NLE_NOMEM: return -ENOMEM;
    case NLE_OBJ_NOTFOUND: return -ENOENT;
    case NLE_NODEV: return -ENODEV;
    case NLE_OPNOTSUPP: return -ENOTSUP;
    case NLE_EXIST: return -EEXIST;
    default: return -EIO;
    }
}

static int got_index(struct nl_msg *msg, void *arg)
{
    struct nlattr *a[NBD_ATTR_MAX + 1];
    struct genlmsghdr *g = nlmsg_data(nlmsg_hdr(msg));
    if (nla_parse(a, NBD_ATTR_MAX, genlmsg_attrdata(g, 0), genlmsg_attrlen(g, 0), NULL) == 0 &&
        a[NBD_ATTR_INDEX])
        *(int *)arg = (int)nla_get_u32(a[NBD_ATTR_INDEX]);
    return NL_OK;
}

int kernel_connect_netlink(const struct kernel_conf *k, int *index, char *err, size_t errlen)
{
    struct genl_nbd n;
    int r = genl_nbd_open(&n);
    if (r < 0) {
        snprintf(err, errlen, "netlink: the kernel has no nbd netlink interface");
        return r;
    }
    struct nl_msg *msg = nlmsg_alloc();
    r = -ENOMEM;
    if (!msg || !genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, n.family, 0, 0, NBD_CMD_CONNECT,
                             NBD_GENL_VERSION))
        goto out;
    if (*index >= 0 && nla_put_u32(msg, NBD_ATTR_INDEX, (uint32_t)*index) < 0)
        goto out;
    if (nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, k->size) < 0 ||
        nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, k->block_size) < 0 ||
        nla_put_u64(msg, NBD_ATTR_SERVER_FLAGS, k->flags) < 0 ||
        nla_put_u64(msg, NBD_ATTR_TIMEOUT, k->timeout) < 0)
        goto out;
    if (k->backend && nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, k->backend) < 0)
        goto out;
    struct nlattr *socks = nla_nest_start(msg, NBD_ATTR_SOCKETS);
    if (!socks)
        goto out;
    for (int i = 0; i < k->nfds; i++) {
        struct nlattr *item = nla_nest_start(msg, NBD_SOCK_ITEM);
        if (!item || nla_put_u32(msg, NBD_SOCK_FD, (uint32_t)k->fds[i]) < 0)
            goto out;
        nla_nest_end(msg, item);
    }
    nla_nest_end(msg, socks);
    nl_socket_modify_cb(n.sk, NL_CB_VALID, NL_CB_CUSTOM, got_index, index);
    int e = nl_send_sync(n.sk, msg);      /* frees msg */
    msg = NULL;
    if (e < 0) {
        r = from_nlerr(e);
        snprintf(err, errlen, "the kernel refused the connection: %s%s", nl_geterror(e),
                 r == -EBUSY ? " (the device is already in use)" : "");
    } else {
        r = 0;
    }
out:
    if (r == -ENOMEM)
        snprintf(err, errlen, "netlink: out of memory");
    nlmsg_free(msg);
    genl_nbd_close(&n);
    return r;
}

static int simple_cmd(int cmd, int index)
{
    struct genl_nbd n;
    int r = genl_nbd_open(&n);
    if (r < 0)
        return r;
    struct nl_msg *msg = nlmsg_alloc();
    r = -ENOMEM;
    if (msg && genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, n.family, 0, 0, (uint8_t)cmd,
                           NBD_GENL_VERSION) &&
        nla_put_u32(msg, NBD_ATTR_INDEX, (uint32_t)index) == 0) {
        int e = nl_send_sync(n.sk, msg);
        msg = NULL;
        r = e < 0 ? from_nlerr(e) : 0;
    }
    nlmsg_free(msg);
    genl_nbd_close(&n);
    return r;
}

int kernel_disconnect(int index)
{
    if (kernel_has_netlink())
        return simple_cmd(NBD_CMD_DISCONNECT, index);
    char dev[32];
    snprintf(dev, sizeof dev, "/dev/nbd%d", index);
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = ioctl(fd, NBD_IOC_DISCONNECT) < 0 ? -errno : 0;
    ioctl(fd, NBD_IOC_CLEAR_SOCK);
    close(fd);
    return r;
}

/* ----------------------------------------------------------------- ioctl */

int kernel_ioctl_setup(const struct kernel_conf *k, int index, int *devfd, char *err,
                       size_t errlen)
{
    char dev[32];
    snprintf(dev, sizeof dev, "/dev/nbd%d", index);
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", dev, strerror(errno));
        return -errno;
    }
    const char *step = "NBD_SET_BLKSIZE";
    if (ioctl(fd, NBD_IOC_SET_BLKSIZE, (unsigned long)k->block_size) < 0)
        goto fail;
    step = "NBD_SET_SIZE_BLOCKS";
    if (ioctl(fd, NBD_IOC_SET_SIZE_BLOCKS, (unsigned long)(k->size / k->block_size)) < 0)
        goto fail;
    step = "NBD_SET_TIMEOUT";
    if (ioctl(fd, NBD_IOC_SET_TIMEOUT, (unsigned long)k->timeout) < 0)
        goto fail;
    step = "NBD_SET_FLAGS";
    if (ioctl(fd, NBD_IOC_SET_FLAGS, (unsigned long)k->flags) < 0)
        goto fail;
    step = "NBD_SET_SOCK";
    for (int i = 0; i < k->nfds; i++)
        if (ioctl(fd, NBD_IOC_SET_SOCK, (unsigned long)k->fds[i]) < 0)
            goto fail;
    *devfd = fd;
    return 0;
fail:;
    int e = errno;
    snprintf(err, errlen, "%s: %s failed: %s%s", dev, step, strerror(e),
             e == EBUSY ? " (the device is already in use)" : "");
    ioctl(fd, NBD_IOC_CLEAR_SOCK);
    close(fd);
    return -e;
}

int kernel_ioctl_run(int devfd)
{
    int r = ioctl(devfd, NBD_IOC_DO_IT) < 0 ? -errno : 0;   /* until disconnect */
    ioctl(devfd, NBD_IOC_CLEAR_QUE);
    ioctl(devfd, NBD_IOC_CLEAR_SOCK);
    close(devfd);
    return r;
}

/* ---------------------------------------------------------------- sysfs */

bool kernel_is_connected(int index)
{
    char p[64];
    snprintf(p, sizeof p, "/sys/block/nbd%d/pid", index);
    return access(p, F_OK) == 0;
}

uint64_t kernel_size_sectors(int index)
{
    char p[64];
    snprintf(p, sizeof p, "/sys/block/nbd%d/size", index);
    FILE *f = fopen(p, "r");
    unsigned long long v = 0;
    if (f) {
        if (fscanf(f, "%llu", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v;
}

int kernel_find_free(void)
{
    for (int i = 0; i < 1024; i++) {
        char p[64];
        snprintf(p, sizeof p, "/sys/block/nbd%d", i);
        if (access(p, F_OK) < 0)
            return -ENODEV;
        if (!kernel_is_connected(i) && kernel_size_sectors(i) == 0)
            return i;
    }
    return -ENODEV;
}

int kernel_parse_device(const char *dev)
{
    const char *p = dev;
    if (!strncmp(p, "/dev/", 5))
        p += 5;
    if (strncmp(p, "nbd", 3) != 0)
        return -EINVAL;
    p += 3;
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || *end || v < 0 || v > 1000000)
        return -EINVAL;
    return (int)v;
}
