/* A tiny assertion harness for the C unit tests: counts checks and prints
 * "N passed, N failed" as the last line, which CI reads. */
#ifndef JWKE_CHECK_H
#define JWKE_CHECK_H
#include <stdio.h>
#include <string.h>

static int checks_passed, checks_failed;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (cond) {                                                                        \
            checks_passed++;                                                               \
        } else {                                                                           \
            checks_failed++;                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                                  \
    } while (0)

static int check_summary(void)
{
    printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed ? 1 : 0;
}
#endif
