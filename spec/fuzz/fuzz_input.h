/* A tiny reader over a fuzzer's input, shared by the targets: fields with
 * a two-byte length prefix, clamped to what is left, so one input encodes
 * several byte strings and libFuzzer can grow and shrink each of them. */
#ifndef JWKE_FUZZ_INPUT_H
#define JWKE_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>

typedef struct fuzz_input {
    const uint8_t *p;
    size_t left;
} fuzz_input;

static inline uint8_t fuzz_byte(fuzz_input *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}

/* The next field: at most `max` bytes (the prefix is clamped). */
static inline const uint8_t *fuzz_field(fuzz_input *in, size_t max, size_t *len)
{
    size_t n = (size_t)fuzz_byte(in) << 8;
    n |= fuzz_byte(in);
    if (n > in->left)
        n = in->left;
    if (n > max)
        n = max;
    const uint8_t *field = in->p;
    in->p += n;
    in->left -= n;
    *len = n;
    return field;
}

/* A check that must hold for every input: a failure is a crash. */
#define FUZZ_ASSERT(cond)                                                                  \
    do {                                                                                   \
        if (!(cond))                                                                       \
            __builtin_trap();                                                              \
    } while (0)

#endif
