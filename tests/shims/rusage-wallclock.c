/* LD_PRELOAD shim for tests only: qemu-img sizes LUKS PBKDF2 by timing a
 * trial run with getrusage(RUSAGE_THREAD) and gives up ("Unable to get
 * accurate CPU usage") when that clock has not moved.  Where the thread CPU
 * clock is coarse (some CI hosts and sandboxes) it never moves for a trial of a
 * few milliseconds, so creating a LUKS image fails every time.  This shim
 * answers RUSAGE_THREAD with the monotonic wall clock, which always moves;
 * other requests go to libc.  Single-purpose; no state beyond the libc pointer. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

int getrusage(int who, struct rusage *ru)
{
    static int (*real)(int, struct rusage *);

    if (who == RUSAGE_THREAD && ru) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
            memset(ru, 0, sizeof(*ru));
            ru->ru_utime.tv_sec = ts.tv_sec;
            ru->ru_utime.tv_usec = ts.tv_nsec / 1000;
            return 0;
        }
    }
    if (!real)
        real = (int (*)(int, struct rusage *))dlsym(RTLD_NEXT, "getrusage");
    return real ? real(who, ru) : -1;
}
