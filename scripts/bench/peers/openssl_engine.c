/* peers.sh's OpenSSL peer: what a C programmer picks without jwkengine,
 * OpenSSL 3 with libp11's pkcs11 engine (Debian libengine-pkcs11-openssl)
 * loading the HSM key by PKCS#11 URI, in process. Per token: claims built
 * and base64url-encoded, EVP_DigestSign (SHA-256 on the host, the engine's
 * C_SignInit + C_Sign), ECDSA's DER turned into JOSE's r||s.
 *
 *   openssl_engine ENGINE_SO MODULE KEY_URI PIN ALG KID SECONDS */
#define OPENSSL_SUPPRESS_DEPRECATED /* ENGINE is what libp11 0.4 offers */
#include <openssl/ecdsa.h>
#include <openssl/engine.h>
#include <openssl/evp.h>

#include "jwt_common.h"

typedef struct {
    EVP_PKEY *key;
    int ecdsa;
} ossl_ctx;

static int ossl_sign(void *p, const char *header_b64, char *token)
{
    ossl_ctx *c = p;
    size_t input_len = peer_signing_input(header_b64, token);
    unsigned char der[1024], raw[64];
    size_t sig_len = sizeof der;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, c->key) == 1 &&
             EVP_DigestSign(md, der, &sig_len, (const unsigned char *)token, input_len) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return 1;
    const unsigned char *sig = der;
    if (c->ecdsa) {
        const unsigned char *q = der;
        ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &q, (long)sig_len);
        if (!s || BN_bn2binpad(ECDSA_SIG_get0_r(s), raw, 32) != 32 ||
            BN_bn2binpad(ECDSA_SIG_get0_s(s), raw + 32, 32) != 32) {
            ECDSA_SIG_free(s);
            return 1;
        }
        ECDSA_SIG_free(s);
        sig = raw;
        sig_len = 64;
    }
    token[input_len] = '.';
    peer_b64url(sig, sig_len, token + input_len + 1);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: openssl_engine ENGINE_SO MODULE KEY_URI PIN ALG KID SECONDS\n");
        return 2;
    }
    ENGINE_load_dynamic();
    ENGINE *e = ENGINE_by_id("dynamic");
    if (!e || !ENGINE_ctrl_cmd_string(e, "SO_PATH", argv[1], 0) || !ENGINE_ctrl_cmd_string(e, "ID", "pkcs11", 0) ||
        !ENGINE_ctrl_cmd_string(e, "LOAD", NULL, 0) || !ENGINE_ctrl_cmd_string(e, "MODULE_PATH", argv[2], 0) ||
        !ENGINE_ctrl_cmd_string(e, "PIN", argv[4], 0) || !ENGINE_init(e))
        return fprintf(stderr, "openssl_engine: cannot load libp11's engine\n"), 1;
    ossl_ctx c = {ENGINE_load_private_key(e, argv[3], NULL, NULL), strcmp(argv[5], "ES256") == 0};
    if (!c.key)
        return fprintf(stderr, "openssl_engine: no key %s\n", argv[3]), 1;
    return peer_run(ossl_sign, &c, argv[5], argv[6], atof(argv[7]));
}
