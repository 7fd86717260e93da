#include "alg.h"

#include <string.h>

static const jwke_alg algorithms[] = {
    {"RS256", JWKE_KIND_RSA, JWKE_SCHEME_RSA_PKCS1, "SHA256", 32, NULL, 0},
    {"RS384", JWKE_KIND_RSA, JWKE_SCHEME_RSA_PKCS1, "SHA384", 48, NULL, 0},
    {"RS512", JWKE_KIND_RSA, JWKE_SCHEME_RSA_PKCS1, "SHA512", 64, NULL, 0},
    {"PS256", JWKE_KIND_RSA, JWKE_SCHEME_RSA_PSS, "SHA256", 32, NULL, 0},
    {"PS384", JWKE_KIND_RSA, JWKE_SCHEME_RSA_PSS, "SHA384", 48, NULL, 0},
    {"PS512", JWKE_KIND_RSA, JWKE_SCHEME_RSA_PSS, "SHA512", 64, NULL, 0},
    {"ES256", JWKE_KIND_EC, JWKE_SCHEME_ECDSA, "SHA256", 32, "P-256", 32},
    {"ES384", JWKE_KIND_EC, JWKE_SCHEME_ECDSA, "SHA384", 48, "P-384", 48},
    {"ES512", JWKE_KIND_EC, JWKE_SCHEME_ECDSA, "SHA512", 64, "P-521", 66},
    {"EdDSA", JWKE_KIND_OKP, JWKE_SCHEME_EDDSA, NULL, 0, "Ed25519", 32},
};

#define N_ALGORITHMS (sizeof algorithms / sizeof algorithms[0])

const jwke_alg *jwke_alg_by_name(const char *name)
{
    for (size_t i = 0; i < N_ALGORITHMS; i++)
        if (strcmp(algorithms[i].name, name) == 0)
            return &algorithms[i];
    return NULL;
}

const jwke_alg *jwke_alg_for_curve(const char *crv)
{
    for (size_t i = 0; i < N_ALGORITHMS; i++)
        if (algorithms[i].curve && strcmp(algorithms[i].curve, crv) == 0)
            return &algorithms[i];
    return NULL;
}

size_t jwke_alg_signature_size(const jwke_alg *alg, int key_bits)
{
    switch (alg->scheme) {
    case JWKE_SCHEME_RSA_PKCS1:
    case JWKE_SCHEME_RSA_PSS:
        return (size_t)(key_bits + 7) / 8;
    case JWKE_SCHEME_ECDSA:
        return 2 * alg->coordinate_size;
    case JWKE_SCHEME_EDDSA:
        return 64;
    }
    return 0;
}
