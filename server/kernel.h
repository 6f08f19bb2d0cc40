/* kernel.h — the Linux nbd driver as vdisk-nbd uses it (kernel.c).
 * Thread model: see kernel.c.
 */
#ifndef VDISK_KERNEL_H
#define VDISK_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kernel_conf {
    uint64_t size;          /* bytes */
    uint64_t block_size;    /* logical sector size the kernel will use */
    uint64_t flags;         /* NBD transmission flags */
    uint64_t timeout;       /* seconds before a request fails */
    const char *backend;    /* shown in /sys/block/nbdX/backend, may be NULL */
    const int *fds;         /* connected sockets for the kernel's side */
    int nfds;
};

/* Load nbd (with partitions) unless loaded; -1 with a message if impossible. */
int kernel_load_module(char *err, size_t errlen);
/* The module's max_part parameter, -1 if unknown. */
int kernel_max_part(void);
bool kernel_has_netlink(void);
/* *index < 0 asks the kernel for a free device; it is set to the one used. */
int kernel_connect_netlink(const struct kernel_conf *k, int *index, char *err, size_t errlen);
/* Old interface: configure /dev/nbd@index; then kernel_ioctl_run(*devfd)
 * blocks until the device is disconnected. */
int kernel_ioctl_setup(const struct kernel_conf *k, int index, int *devfd, char *err,
                       size_t errlen);
int kernel_ioctl_run(int devfd);
int kernel_disconnect(int index);
bool kernel_is_connected(int index);
uint64_t kernel_size_sectors(int index);
int kernel_find_free(void);
/* "/dev/nbd3" or "nbd3" -> 3; -EINVAL otherwise. */
int kernel_parse_device(const char *dev);

#endif
