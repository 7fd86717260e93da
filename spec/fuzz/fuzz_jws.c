/* Compact JWS splitting and decoding, and the strict JSON checker
 * (core/jose_parse.c): every input goes through both.
 *
 * A decoded JWS must be consistent with its token: exactly two dots, the
 * signing input ends at the second one, and the header passes the JSON
 * check on its own. The JSON checker must give the same answer twice and
 * never accept an object when it rejected the same text as any value. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_input.h"
#include "jose_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    jwke_error err;

    jwke_jws_limits limits = {64 * 1024, 8 * 1024, 0};
    jwke_jws_decoded d;
    int rc = jwke_jws_decode(text, size, &limits, &d, &err);
    if (rc == 0) {
        size_t dots = 0;
        for (size_t i = 0; i < size; i++)
            dots += data[i] == '.';
        FUZZ_ASSERT(dots == 2);
        FUZZ_ASSERT(d.signing_input_len < size && data[d.signing_input_len] == '.');
        FUZZ_ASSERT(d.header_len > 0 && d.payload_len > 0 && d.signature_len > 0);
        FUZZ_ASSERT(jwke_json_check((const char *)d.header, d.header_len, 1, 0, &err) == 0);
        jwke_jws_decoded_free(&d);
    } else {
        FUZZ_ASSERT(rc == -1 || rc == JWKE_JOSE_TOO_LARGE);
        FUZZ_ASSERT(err.message[0] != '\0');
        /* every failure carries its code, and the code agrees with rc */
        FUZZ_ASSERT(err.code != NULL);
        FUZZ_ASSERT((strcmp(err.code, "ERR_JWS_TOO_LARGE") == 0) == (rc == JWKE_JOSE_TOO_LARGE));
    }

    int any = jwke_json_check(text, size, 0, 0, &err);
    int object = jwke_json_check(text, size, 1, 0, &err);
    FUZZ_ASSERT(jwke_json_check(text, size, 0, 0, &err) == any);
    if (any != 0)
        FUZZ_ASSERT(object != 0);
    /* A shallower limit can only reject more. */
    if (jwke_json_check(text, size, 0, 4, &err) == 0)
        FUZZ_ASSERT(any == 0);
    return 0;
}
