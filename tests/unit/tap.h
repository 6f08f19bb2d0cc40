/* tap.h — minimal TAP output for the C unit tests in tests/unit/.
 * Each test binary prints "ok N - what" / "not ok N - what" lines and a plan,
 * and exits non-zero when anything failed.  Thread model: single-threaded.
 */
#ifndef VDISK_TAP_H
#define VDISK_TAP_H

#include <stdio.h>
#include <stdlib.h>

static int tap_n, tap_failed;

/* @cond is evaluated exactly once (it often has side effects). */
#define TAP_OK(cond, ...)                                                     \
    do {                                                                      \
        int tap_ok_ = (cond) ? 1 : 0;                                         \
        tap_n++;                                                              \
        if (!tap_ok_)                                                         \
            tap_failed++;                                                     \
        printf("%sok %d - ", tap_ok_ ? "" : "not ", tap_n);                   \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
        if (!tap_ok_)                                                         \
            printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
    } while (0)

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

#endif
