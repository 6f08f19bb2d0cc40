/* daemon.c — what a server process does to run in the background: leave
 * the caller's terminal and pipes, and record its PID.
 * Thread model: called before any thread is started.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void detach_from_terminal(bool keep_stderr)
{
    setsid();
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        return;
    dup2(null, 0);
    dup2(null, 1);
    if (!keep_stderr)
        dup2(null, 2);
    if (null > 2)
        close(null);
}

int write_pid_file(const char *path, pid_t pid)
{
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%ld\n", (long)pid) < 0 || fclose(f) != 0) {
        fprintf(stderr, "vdisk-nbd: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}
