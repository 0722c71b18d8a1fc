/* The unit tests' assertion: report file:line and the condition, count, and carry on. */
#ifndef ICH_TEST_EXPECT_H
#define ICH_TEST_EXPECT_H

#include <stdio.h>

static int failures;

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                        \
        }                                                                      \
    } while (0)

#endif
