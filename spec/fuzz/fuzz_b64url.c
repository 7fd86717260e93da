/* base64url decoding and encoding (core/b64url.c), both padding modes.
 *
 * Beyond "no crash": the decoder is strict, so any text it accepts must be
 * exactly the encoding of what it decoded to (one value, one encoding),
 * and encoding then decoding any bytes gives them back. */
#include <stdlib.h>
#include <string.h>

#include "b64url.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int pad = 0; pad <= 1; pad++) {
        enum jwke_b64_padding mode = pad ? JWKE_B64_PAD : JWKE_B64_NOPAD;
        size_t room = jwke_b64url_decoded_max(size);
        unsigned char *decoded = malloc(room);
        const char *why = NULL;
        long n = jwke_b64url_decode((const char *)data, size, decoded, room, mode, &why);
        if (n >= 0) {
            FUZZ_ASSERT((size_t)n <= jwke_b64url_decoded_max(size));
            size_t len = jwke_b64url_encoded_len((size_t)n, mode);
            char *again = malloc(len + 1);
            FUZZ_ASSERT(jwke_b64url_encode(decoded, (size_t)n, again, len, mode) == (long)len);
            FUZZ_ASSERT(len == size && memcmp(again, data, size) == 0);
            free(again);
        } else {
            FUZZ_ASSERT(n == -1 && why != NULL);
        }
        free(decoded);

        /* The input as bytes: encode, decode, compare. */
        size_t len = jwke_b64url_encoded_len(size, mode);
        char *text = malloc(len + 1);
        FUZZ_ASSERT(jwke_b64url_encode(data, size, text, len, mode) == (long)len);
        /* one byte short of the encoding is refused */
        FUZZ_ASSERT(len == 0 || jwke_b64url_encode(data, size, text, len - 1, mode) == -1);
        /* exactly the size of the bytes encoded: the decoder needs no slack */
        unsigned char *back = malloc(size ? size : 1);
        n = jwke_b64url_decode(text, len, back, size, mode, &why);
        FUZZ_ASSERT(n == (long)size && memcmp(back, data, size) == 0);
        free(back);
        free(text);
    }
    return 0;
}
