/* A signature that fails verify-after-sign never reaches the caller, not
 * even in the caller's own buffer: jwke_p11_sign wipes it (it may be an
 * RSA-CRT fault, which gives the private key away).
 *   wiped_signature FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL
 * with the fault module corrupting signatures (JWKE_FAULT_CORRUPT_SIGNATURE=1,
 * JWKE_FAULT_MODULE the real module) and an RSA pair labelled KEY_LABEL:
 * fills a buffer of its own with a pattern, signs into it with the default
 * setting (RSA signatures are checked), and prints "code=ERR_SIGNATURE_FAULT
 * wiped=yes" and exits 0 when the call failed with that code and every
 * byte the token wrote is zero; else says what it found and exits 1. */
#include <stdio.h>
#include <string.h>

#include "p11_sign.h"
#include "token_setup.h"

#define PATTERN 0xa5

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: wiped_signature FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL\n");
        return 2;
    }
    test_token t;
    if (test_token_open(&t, argv[1], argv[2], argv[3], argv[4], NULL) != 0)
        return 1;
    static const unsigned char input[] = "wiped signature";
    unsigned char sig[1024];
    memset(sig, PATTERN, sizeof sig);
    size_t expected = jwke_alg_signature_size(t.key->alg, t.key->bits);
    size_t sig_len = sizeof sig;
    jwke_error err;
    memset(&err, 0, sizeof err);
    int rc = jwke_p11_sign(t.token, t.key, t.key->alg, input, sizeof input - 1, sig, &sig_len, &err);
    size_t zero = 0, untouched = 0;
    for (size_t i = 0; i < expected; i++) {
        zero += sig[i] == 0;
        untouched += sig[i] == PATTERN;
    }
    test_token_close(&t);
    if (rc == 0 || !err.code || strcmp(err.code, "ERR_SIGNATURE_FAULT") != 0) {
        fprintf(stderr, "expected ERR_SIGNATURE_FAULT, got rc=%d code=%s: %s\n", rc,
                err.code ? err.code : "(none)", rc ? err.message : "");
        return 1;
    }
    if (untouched == expected) {
        fprintf(stderr, "the token wrote nothing into the buffer: nothing to check\n");
        return 1;
    }
    printf("code=%s wiped=%s (%zu of %zu bytes zero)\n", err.code, zero == expected ? "yes" : "no", zero,
           expected);
    return zero == expected ? 0 : 1;
}
