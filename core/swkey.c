#include "swkey.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "b64url.h"
#include "evp_sig.h"
#include "pkey.h"

/* ---- common ---------------------------------------------------------- */

/* A public-only EVP_PKEY rebuilt from the public members, so objects handed
 * to verifiers never share (and keep alive) the private half. */
static EVP_PKEY *public_copy(const EVP_PKEY *pkey, jwke_error *err)
{
    jwke_public_members m;
    if (jwke_pkey_public_members(pkey, &m, err) != 0)
        return NULL;
    EVP_PKEY *pub = NULL;
    switch (m.kind) {
    case JWKE_KIND_RSA:
        pub = jwke_pkey_rsa_public(m.n, m.n_len, m.e, m.e_len, err);
        break;
    case JWKE_KIND_EC:
        pub = jwke_pkey_ec_public(m.crv, m.x, m.coordinate_len, m.y, m.coordinate_len, err);
        break;
    case JWKE_KIND_OKP:
        pub = jwke_pkey_okp_public(m.crv, m.x, m.coordinate_len, err);
        break;
    }
    jwke_public_members_clear(&m);
    return pub;
}

/* Refuses key types no JWS algorithm here can use (RSA-PSS-restricted keys,
 * X25519, Ed448, DSA, other curves...). */
static int check_supported(const EVP_PKEY *pkey, jwke_error *err)
{
    switch (jwke_pkey_kind(pkey)) {
    case JWKE_KIND_RSA:
        return jwke_pkey_check_rsa_bits(EVP_PKEY_get_bits(pkey), err);
    case JWKE_KIND_OKP:
        return 0;
    case JWKE_KIND_EC:
        if (jwke_pkey_curve(pkey))
            return 0;
        return jwke_fail(err, "unsupported EC curve: only P-256, P-384 and P-521 are accepted");
    default:
        return jwke_fail(err,
                         "unsupported key type '%s': only RSA, EC (P-256, P-384, P-521) and "
                         "Ed25519 keys are accepted",
                         EVP_PKEY_get0_type_name(pkey));
    }
}

/* Takes ownership of pkey (and pub, when given) and fills out; frees both
 * on failure. */
static int adopt(EVP_PKEY *pkey, EVP_PKEY *pub, int is_private, jwke_swkey *out,
                 jwke_error *err)
{
    if (check_supported(pkey, err) != 0)
        goto fail;
    if (!pub && !(pub = public_copy(pkey, err)))
        goto fail;
    out->pkey = pkey;
    out->public_pkey = pub;
    out->is_private = is_private;
    return 0;
fail:
    EVP_PKEY_free(pkey);
    EVP_PKEY_free(pub);
    return -1;
}

/* A public-only key is its own public copy. */
static int adopt_public(EVP_PKEY *pub, jwke_swkey *out, jwke_error *err)
{
    EVP_PKEY_up_ref(pub);
    return adopt(pub, pub, 0, out, err);
}

void jwke_swkey_free(jwke_swkey *key)
{
    EVP_PKEY_free(key->pkey);
    EVP_PKEY_free(key->public_pkey);
    key->pkey = key->public_pkey = NULL;
    key->is_private = 0;
}

const char *const jwke_jwk_binary_members[JWKE_JWK_BINARY_MEMBERS] = {
    "n", "e", "d", "p", "q", "dp", "dq", "qi", "x", "y"};

int jwke_jwk_member_ktys(size_t index)
{
    static const int ktys[JWKE_JWK_BINARY_MEMBERS] = {
        JWKE_KTY_RSA, JWKE_KTY_RSA, JWKE_KTY_RSA | JWKE_KTY_EC | JWKE_KTY_OKP, /* n e d */
        JWKE_KTY_RSA, JWKE_KTY_RSA, JWKE_KTY_RSA, JWKE_KTY_RSA, JWKE_KTY_RSA,  /* p q dp dq qi */
        JWKE_KTY_EC | JWKE_KTY_OKP, JWKE_KTY_EC};                               /* x y */
    return index < JWKE_JWK_BINARY_MEMBERS ? ktys[index] : 0;
}

jwke_bytes *jwke_jwk_member_at(jwke_jwk_members *m, size_t index)
{
    jwke_bytes *all[JWKE_JWK_BINARY_MEMBERS] = {&m->n, &m->e, &m->d,  &m->p, &m->q,
                                                &m->dp, &m->dq, &m->qi, &m->x, &m->y};
    return index < JWKE_JWK_BINARY_MEMBERS ? all[index] : NULL;
}

int jwke_jwk_member_is_private(const char *name, size_t len)
{
    static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi"};
    for (size_t i = 0; i < sizeof private_members / sizeof private_members[0]; i++)
        if (strlen(private_members[i]) == len && memcmp(private_members[i], name, len) == 0)
            return 1;
    return 0;
}

int jwke_jwk_member_decode(const char *name, const char *text, size_t len, jwke_bytes *out,
                           jwke_error *err)
{
    size_t room = jwke_b64url_decoded_max(len);
    if (room > JWKE_JWK_MEMBER_MAX + 3) /* base64url's own slack aside */
        return jwke_fail(err, "JWK member '%s' is too long", name);
    out->data = OPENSSL_malloc(room ? room : 1); /* wiped by jwke_jwk_members_clear */
    if (!out->data)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading JWK member '%s'", name);
    out->len = room; /* so a failure below still wipes the whole buffer */
    const char *why;
    long n = jwke_b64url_decode(text, len, out->data, room, JWKE_B64_NOPAD, &why);
    if (n < 0)
        return jwke_fail(err, "JWK member '%s' is not valid base64url: %s", name, why);
    if (n == 0)
        return jwke_fail(err, "JWK member '%s' is empty", name);
    if ((size_t)n > JWKE_JWK_MEMBER_MAX)
        return jwke_fail(err, "JWK member '%s' is too long", name);
    OPENSSL_cleanse(out->data + n, room - (size_t)n);
    out->len = (size_t)n;
    return 0;
}

void jwke_jwk_members_clear(jwke_jwk_members *m)
{
    for (size_t i = 0; i < JWKE_JWK_BINARY_MEMBERS; i++) {
        jwke_bytes *b = jwke_jwk_member_at(m, i);
        OPENSSL_clear_free(b->data, b->len);
        b->data = NULL;
        b->len = 0;
    }
}

/* ---- private key checks ---------------------------------------------- */

static int has_bn_param(const EVP_PKEY *pkey, const char *name)
{
    BIGNUM *bn = BN_secure_new();
    int ok = bn && EVP_PKEY_get_bn_param(pkey, name, &bn);
    BN_clear_free(bn);
    ERR_clear_error();
    return ok;
}

/* The CRT members agree with n, e and d: n = p q, dp = d mod (p-1),
 * dq = d mod (q-1), e dp = 1 mod (p-1), e dq = 1 mod (q-1), q qi = 1 mod p.
 * OpenSSL's own pairwise check also tests p and q for primality, which
 * costs a quarter of a second per 4096-bit key and buys nothing here:
 * OpenSSL checks every CRT result against e and falls back to d, so odd
 * factors can slow signing down but never yield a bad signature.
 * 1 if consistent. */
static int rsa_crt_consistent(const EVP_PKEY *pkey)
{
    static const char *const names[] = {
        OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2, OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
    enum { N, E, D, P, Q, DP, DQ, QI, P1, Q1, T, COUNT };
    BIGNUM *v[COUNT] = {NULL};
    BN_CTX *bn_ctx = BN_CTX_secure_new();
    int ok = bn_ctx != NULL;
    for (int i = 0; ok && i < COUNT; i++)
        ok = (v[i] = BN_secure_new()) != NULL &&
             (i > QI || EVP_PKEY_get_bn_param(pkey, names[i], &v[i]));
    ok = ok && BN_mul(v[T], v[P], v[Q], bn_ctx) && BN_cmp(v[T], v[N]) == 0 &&
         BN_sub(v[P1], v[P], BN_value_one()) && BN_sub(v[Q1], v[Q], BN_value_one()) &&
         BN_mod(v[T], v[D], v[P1], bn_ctx) && BN_cmp(v[T], v[DP]) == 0 &&
         BN_mod(v[T], v[D], v[Q1], bn_ctx) && BN_cmp(v[T], v[DQ]) == 0 &&
         BN_mod_mul(v[T], v[E], v[DP], v[P1], bn_ctx) && BN_is_one(v[T]) &&
         BN_mod_mul(v[T], v[E], v[DQ], v[Q1], bn_ctx) && BN_is_one(v[T]) &&
         BN_mod_mul(v[T], v[Q], v[QI], v[P], bn_ctx) && BN_is_one(v[T]);
    for (int i = 0; i < COUNT; i++)
        BN_clear_free(v[i]);
    BN_CTX_free(bn_ctx);
    ERR_clear_error();
    return ok;
}

/* Proves that a private key and its public half belong together before the
 * key is trusted to sign. */
static int check_private(EVP_PKEY *pkey, EVP_PKEY *pub, jwke_error *err)
{
    enum jwke_key_kind kind = jwke_pkey_kind(pkey);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    int rc = -1;
    if (!ctx) {
        jwke_fail_openssl(err, "cannot check the private key");
        goto done;
    }
    if (kind == JWKE_KIND_EC) {
        /* The point is already known to be on the curve (it was built). */
        if (EVP_PKEY_private_check(ctx) != 1) {
            ERR_clear_error();
            jwke_fail(err, "EC private key d is out of range for its curve");
            goto done;
        }
        if (EVP_PKEY_pairwise_check(ctx) != 1) {
            ERR_clear_error();
            jwke_fail(err, "EC public point (x, y) does not match the private key d");
            goto done;
        }
    } else if (kind == JWKE_KIND_RSA) {
        /* With the CRT members present OpenSSL signs through them, and it
         * silently falls back to d when they are wrong: check them. */
        if (has_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1) && !rsa_crt_consistent(pkey)) {
            jwke_fail(err, "RSA private key is inconsistent: p, q, dp, dq or qi do not "
                           "match n, e and d");
            goto done;
        }
        /* n, e, d alone cannot be checked structurally: one signature can. */
        static const unsigned char probe[] = "jwkengine private key check";
        unsigned char sig[JWKE_MAX_SIGNATURE];
        size_t sig_len = sizeof sig;
        const jwke_alg *rs256 = jwke_alg_default(JWKE_KIND_RSA, NULL);
        if (jwke_evp_sign(pkey, rs256, probe, sizeof probe, sig, &sig_len, err) != 0) {
            ERR_clear_error();
            jwke_fail(err, "RSA private key cannot sign");
            goto done;
        }
        if (jwke_evp_verify(pub, rs256, probe, sizeof probe, sig, sig_len, err) != 1) {
            ERR_clear_error();
            jwke_fail(err, "RSA private exponent d does not match n and e");
            goto done;
        }
    }
    rc = 0;
done:
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

/* A private key built from JWK members, once it matches its public half
 * (pkey may be NULL: building it failed, err says why); frees both on
 * failure. */
static int adopt_private(EVP_PKEY *pkey, EVP_PKEY *pub, jwke_swkey *out, jwke_error *err)
{
    if (!pkey || check_private(pkey, pub, err) != 0) {
        EVP_PKEY_free(pkey);
        EVP_PKEY_free(pub);
        return -1;
    }
    return adopt(pkey, pub, 1, out, err);
}

/* ---- generation ------------------------------------------------------ */

static int generate(const jwke_alg *alg, int rsa_bits, jwke_swkey *out, jwke_error *err)
{
    EVP_PKEY *pkey = NULL;
    switch (alg->kind) {
    case JWKE_KIND_RSA: {
        int bits = rsa_bits ? rsa_bits : JWKE_RSA_GENERATE_BITS;
        if (bits < JWKE_RSA_MIN_BITS || bits > JWKE_RSA_MAX_BITS)
            return jwke_fail(err, "RSA key size %d is outside %d..%d bits", bits,
                             JWKE_RSA_MIN_BITS, JWKE_RSA_MAX_BITS);
        /* The public exponent is OpenSSL's documented default, 65537. */
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
        if (!ctx || EVP_PKEY_keygen_init(ctx) <= 0 ||
            EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, bits) <= 0 || EVP_PKEY_generate(ctx, &pkey) <= 0)
            pkey = NULL;
        EVP_PKEY_CTX_free(ctx);
        break;
    }
    case JWKE_KIND_EC:
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", jwke_pkey_group_name(alg));
        break;
    case JWKE_KIND_OKP:
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, OBJ_nid2sn(alg->curve_nid));
        break;
    }
    if (!pkey)
        return jwke_fail_openssl(err, "key generation failed");
    return adopt(pkey, NULL, 1, out, err);
}

int jwke_swkey_generate(const jwke_alg *alg, int rsa_bits, jwke_swkey *out, jwke_error *err)
{
    return generate(alg, rsa_bits, out, err) == 0 ? 0 : jwke_fail_in(err, JWKE_ERR_KEY_GENERATE);
}

/* ---- JWK import ------------------------------------------------------ */

static int need(const jwke_bytes *b, const char *kty, const char *name, jwke_error *err)
{
    if (b->data)
        return 0;
    return jwke_fail(err, "%s JWK member '%s' is missing", kty, name);
}

/* Secure-heap BIGNUM for private values. */
static BIGNUM *secret_bn(const jwke_bytes *b)
{
    BIGNUM *bn = BN_secure_new();
    if (bn && !BN_bin2bn(b->data, (int)b->len, bn)) {
        BN_clear_free(bn);
        bn = NULL;
    }
    return bn;
}

static int rsa_from_jwk(const jwke_jwk_members *m, jwke_swkey *out, jwke_error *err)
{
    if (need(&m->n, "RSA", "n", err) || need(&m->e, "RSA", "e", err))
        return -1;
    const jwke_bytes *crt[] = {&m->p, &m->q, &m->dp, &m->dq, &m->qi};
    int crt_count = 0;
    for (int i = 0; i < 5; i++)
        crt_count += crt[i]->data != NULL;
    if (!m->d.data && crt_count)
        return jwke_fail(err, "RSA JWK has CRT members (p, q, dp, dq, qi) but no 'd'");
    if (crt_count != 0 && crt_count != 5)
        return jwke_fail(err, "RSA JWK must have all of p, q, dp, dq and qi, or none of them");

    /* Validates n and e (size, parity) and becomes the public copy. */
    EVP_PKEY *pub = jwke_pkey_rsa_public(m->n.data, m->n.len, m->e.data, m->e.len, err);
    if (!pub)
        return -1;
    if (!m->d.data)
        return adopt_public(pub, out, err);

    static const char *const crt_names[] = {
        OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2, OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
    BIGNUM *n = BN_bin2bn(m->n.data, (int)m->n.len, NULL);
    BIGNUM *e = BN_bin2bn(m->e.data, (int)m->e.len, NULL);
    BIGNUM *d = secret_bn(&m->d), *bn_crt[5] = {NULL};
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    int ok = n && e && d && bld && !BN_is_zero(d) && BN_cmp(d, n) < 0 &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_D, d);
    for (int i = 0; ok && crt_count && i < 5; i++)
        ok = (bn_crt[i] = secret_bn(crt[i])) != NULL &&
             OSSL_PARAM_BLD_push_BN(bld, crt_names[i], bn_crt[i]);
    EVP_PKEY *pkey = jwke_pkey_from_params("RSA", EVP_PKEY_KEYPAIR, bld, ok,
                                           "RSA private key members are invalid", err);
    BN_free(n);
    BN_free(e);
    BN_clear_free(d);
    for (int i = 0; i < 5; i++)
        BN_clear_free(bn_crt[i]);
    return adopt_private(pkey, pub, out, err);
}

static int ec_from_jwk(const jwke_jwk_members *m, jwke_swkey *out, jwke_error *err)
{
    if (!m->crv)
        return jwke_fail(err, "EC JWK member 'crv' is missing");
    if (need(&m->x, "EC", "x", err) || need(&m->y, "EC", "y", err))
        return -1;
    /* Checks the curve, the coordinate sizes and that the point is on it. */
    EVP_PKEY *pub = jwke_pkey_ec_public(m->crv, m->x.data, m->x.len, m->y.data, m->y.len, err);
    if (!pub)
        return -1;
    if (!m->d.data)
        return adopt_public(pub, out, err);

    const jwke_alg *curve = jwke_alg_for_curve(m->crv);
    size_t size = curve->coordinate_size;
    if (m->d.len != size) {
        EVP_PKEY_free(pub);
        return jwke_fail(err, "EC private key d for %s must be %zu bytes, got %zu", m->crv, size,
                         m->d.len);
    }
    unsigned char point[JWKE_EC_MAX_POINT]; /* size <= JWKE_EC_MAX_COORDINATE: from the table */
    point[0] = 0x04;
    memcpy(point + 1, m->x.data, size);
    memcpy(point + 1 + size, m->y.data, size);
    BIGNUM *d = secret_bn(&m->d);
    const char *group = jwke_pkey_group_name(curve);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    int pushed = d && bld &&
                 OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
                 OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * size) &&
                 OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d);
    EVP_PKEY *pkey = jwke_pkey_from_params("EC", EVP_PKEY_KEYPAIR, bld, pushed,
                                           "cannot build EC private key", err);
    BN_clear_free(d);
    return adopt_private(pkey, pub, out, err);
}

static int okp_from_jwk(const jwke_jwk_members *m, jwke_swkey *out, jwke_error *err)
{
    if (!m->crv)
        return jwke_fail(err, "OKP JWK member 'crv' is missing");
    if (need(&m->x, "OKP", "x", err))
        return -1;
    EVP_PKEY *pub = jwke_pkey_okp_public(m->crv, m->x.data, m->x.len, err);
    if (!pub)
        return -1;
    if (!m->d.data)
        return adopt_public(pub, out, err);
    const jwke_alg *curve = jwke_alg_for_curve(m->crv); /* an OKP curve: pub was built on it */
    if (m->d.len != curve->coordinate_size) {
        EVP_PKEY_free(pub);
        return jwke_fail(err, "%s private key d must be %zu bytes, got %zu", curve->curve,
                         curve->coordinate_size, m->d.len);
    }
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(curve->curve_nid, NULL, m->d.data, m->d.len);
    unsigned char derived[JWKE_EC_MAX_COORDINATE];
    size_t len = sizeof derived;
    if (!pkey || !EVP_PKEY_get_raw_public_key(pkey, derived, &len)) {
        jwke_fail_openssl(err, "cannot build OKP private key");
        goto fail;
    }
    if (len != m->x.len || memcmp(derived, m->x.data, len) != 0) {
        jwke_fail(err, "%s public key x does not match the private key d", curve->curve);
        goto fail;
    }
    return adopt(pkey, pub, 1, out, err);
fail:
    EVP_PKEY_free(pkey);
    EVP_PKEY_free(pub);
    return -1;
}

int jwke_swkey_from_jwk(const jwke_jwk_members *m, jwke_swkey *out, jwke_error *err)
{
    if (!m->kty)
        return jwke_fail(err, "JWK member 'kty' is missing");
    if (strcmp(m->kty, "RSA") == 0)
        return rsa_from_jwk(m, out, err);
    if (strcmp(m->kty, "EC") == 0)
        return ec_from_jwk(m, out, err);
    if (strcmp(m->kty, "OKP") == 0)
        return okp_from_jwk(m, out, err);
    if (strcmp(m->kty, "oct") == 0)
        return jwke_fail(err, "symmetric keys (kty 'oct') are not supported");
    return jwke_fail(err, "unsupported JWK kty '%.32s'", m->kty);
}

/* ---- PEM import ------------------------------------------------------ */

/* Any passphrase request fails: a server must never stop and prompt on a
 * terminal, and encrypted keys are refused before decoding anyway. */
static int refuse_passphrase(char *pass, size_t pass_size, size_t *pass_len,
                             const OSSL_PARAM params[], void *arg)
{
    return 0;
}

typedef struct pem_kind {
    const char *name;      /* PEM block label */
    const char *structure; /* OSSL_DECODER input structure */
    const char *keytype;   /* NULL: named inside the DER */
    int selection;
} pem_kind;

static const pem_kind pem_kinds[] = {
    {"PRIVATE KEY", "PrivateKeyInfo", NULL, EVP_PKEY_KEYPAIR},
    {"RSA PRIVATE KEY", "type-specific", "RSA", EVP_PKEY_KEYPAIR},
    {"EC PRIVATE KEY", "type-specific", "EC", EVP_PKEY_KEYPAIR},
    {"PUBLIC KEY", "SubjectPublicKeyInfo", NULL, EVP_PKEY_PUBLIC_KEY},
};

static EVP_PKEY *decode_der(const pem_kind *kind, const unsigned char *der, size_t der_len,
                            jwke_error *err)
{
    EVP_PKEY *pkey = NULL;
    OSSL_DECODER_CTX *ctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, "DER", kind->structure,
                                                          kind->keytype, kind->selection, NULL,
                                                          NULL);
    if (!ctx || !OSSL_DECODER_CTX_set_passphrase_cb(ctx, refuse_passphrase, NULL) ||
        !OSSL_DECODER_from_data(ctx, &der, &der_len) || !pkey) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
        /* OpenSSL only says "unsupported" here, whatever went wrong. */
        ERR_clear_error();
        jwke_fail(err, "cannot decode the '%s' PEM block: the data is damaged or not a key",
                  kind->name);
    }
    OSSL_DECODER_CTX_free(ctx);
    return pkey;
}

/* Reads one PEM block. 1: got one, 0: no more blocks, -1: error. */
static int next_block(BIO *bio, char **name, char **header, unsigned char **data, long *len,
                      jwke_error *err)
{
    *name = *header = NULL;
    *data = NULL;
    if (PEM_read_bio_ex(bio, name, header, data, len, PEM_FLAG_SECURE | PEM_FLAG_EAY_COMPATIBLE))
        return 1;
    unsigned long code = ERR_peek_last_error();
    if (ERR_GET_LIB(code) == ERR_LIB_PEM && ERR_GET_REASON(code) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return 0;
    }
    return jwke_fail_openssl(err, "cannot read PEM");
}

/* Handles one PEM block: takes the key, skips EC PARAMETERS, refuses the
 * rest. 0 to read on, -1 on error. */
static int take_block(const char *name, const char *header, const unsigned char *der,
                      size_t der_len, EVP_PKEY **pkey, const pem_kind **found, jwke_error *err)
{
    if (strcmp(name, "ENCRYPTED PRIVATE KEY") == 0 || strstr(header, "ENCRYPTED"))
        return jwke_fail(err, "encrypted PEM keys are not supported: decrypt the key first "
                              "(openssl pkey -in encrypted.pem -out key.pem)");
    if (strcmp(name, "EC PARAMETERS") == 0) /* `openssl ecparam -genkey` writes one */
        return 0;
    const pem_kind *kind = NULL;
    for (size_t i = 0; i < sizeof pem_kinds / sizeof pem_kinds[0]; i++)
        if (strcmp(name, pem_kinds[i].name) == 0)
            kind = &pem_kinds[i];
    if (!kind)
        return jwke_fail(err, "unsupported PEM block '%.40s': expected a private or public key",
                         name);
    if (*pkey)
        return jwke_fail(err, "PEM text holds more than one key");
    if (!(*pkey = decode_der(kind, der, der_len, err)))
        return -1;
    *found = kind;
    return 0;
}

static int read_pem(const char *pem, size_t pem_len, jwke_swkey *out, jwke_error *err)
{
    if (pem_len > 1 << 20)
        return jwke_fail(err, "PEM text is too large");
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    if (!bio)
        return jwke_fail_openssl(err, "cannot read PEM");
    EVP_PKEY *pkey = NULL;
    const pem_kind *found = NULL;
    int rc;
    for (;;) {
        char *name, *header;
        unsigned char *data;
        long len;
        rc = next_block(bio, &name, &header, &data, &len, err);
        if (rc <= 0)
            break;
        rc = take_block(name, header, data, (size_t)len, &pkey, &found, err);
        OPENSSL_secure_free(name);
        OPENSSL_secure_free(header);
        OPENSSL_secure_clear_free(data, (size_t)len);
        if (rc < 0)
            break;
    }
    BIO_free(bio);
    if (rc == 0 && !pkey)
        rc = jwke_fail(err, "no PEM key found");
    if (rc < 0) {
        EVP_PKEY_free(pkey);
        return -1;
    }

    int is_private = found->selection == EVP_PKEY_KEYPAIR;
    if (check_supported(pkey, err) != 0) {
        EVP_PKEY_free(pkey);
        return -1;
    }
    EVP_PKEY *pub = public_copy(pkey, err);
    if (!pub || (is_private && check_private(pkey, pub, err) != 0)) {
        EVP_PKEY_free(pkey);
        EVP_PKEY_free(pub);
        return -1;
    }
    return adopt(pkey, pub, is_private, out, err);
}

int jwke_swkey_from_pem(const char *pem, size_t pem_len, jwke_swkey *out, jwke_error *err)
{
    return read_pem(pem, pem_len, out, err) == 0 ? 0 : jwke_fail_in(err, JWKE_ERR_KEY_IMPORT);
}

/* ---- private export -------------------------------------------------- */

/* A BIGNUM parameter as big-endian bytes: minimal (pad 0) or fixed size. */
static int bn_member(const EVP_PKEY *pkey, const char *param, size_t pad, jwke_bytes *out)
{
    BIGNUM *bn = BN_secure_new();
    int ok = bn && EVP_PKEY_get_bn_param(pkey, param, &bn);
    if (ok) {
        size_t len = pad ? pad : (size_t)BN_num_bytes(bn);
        out->data = OPENSSL_malloc(len ? len : 1);
        ok = out->data && BN_bn2binpad(bn, out->data, (int)(len ? len : 1)) >= 0;
        out->len = len ? len : 1;
    }
    BN_clear_free(bn);
    return ok;
}

static int copy_member(const unsigned char *bytes, size_t len, jwke_bytes *out)
{
    out->data = OPENSSL_malloc(len ? len : 1);
    if (!out->data)
        return 0;
    memcpy(out->data, bytes, len);
    out->len = len;
    return 1;
}

int jwke_swkey_private_members(const jwke_swkey *key, jwke_jwk_members *out, jwke_error *err)
{
    memset(out, 0, sizeof *out);
    if (!key->is_private)
        return jwke_fail_code(err, JWKE_ERR_KEY_NOT_PRIVATE, "the key has no private half to export");
    const EVP_PKEY *pkey = key->pkey;
    int ok = 0;
    switch (jwke_pkey_kind(pkey)) {
    case JWKE_KIND_RSA:
        out->kty = "RSA";
        ok = bn_member(pkey, OSSL_PKEY_PARAM_RSA_N, 0, &out->n) &&
             bn_member(pkey, OSSL_PKEY_PARAM_RSA_E, 0, &out->e) &&
             bn_member(pkey, OSSL_PKEY_PARAM_RSA_D, 0, &out->d);
        if (ok && has_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1))
            ok = bn_member(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1, 0, &out->p) &&
                 bn_member(pkey, OSSL_PKEY_PARAM_RSA_FACTOR2, 0, &out->q) &&
                 bn_member(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT1, 0, &out->dp) &&
                 bn_member(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT2, 0, &out->dq) &&
                 bn_member(pkey, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, 0, &out->qi);
        break;
    case JWKE_KIND_EC:
    case JWKE_KIND_OKP: {
        jwke_public_members pub;
        if (jwke_pkey_public_members(pkey, &pub, err) != 0)
            return -1;
        out->kty = pub.kind == JWKE_KIND_EC ? "EC" : "OKP";
        out->crv = pub.crv;
        ok = copy_member(pub.x, pub.coordinate_len, &out->x);
        if (pub.kind == JWKE_KIND_EC) {
            /* RFC 7518 §6.2.2.1: d is as long as a coordinate. */
            ok = ok && copy_member(pub.y, pub.coordinate_len, &out->y) &&
                 bn_member(pkey, OSSL_PKEY_PARAM_PRIV_KEY, pub.coordinate_len, &out->d);
        } else {
            size_t len = 32;
            ok = ok && (out->d.data = OPENSSL_malloc(len)) != NULL &&
                 EVP_PKEY_get_raw_private_key(pkey, out->d.data, &len) && len == 32;
            if (out->d.data)
                out->d.len = 32;
        }
        jwke_public_members_clear(&pub);
        break;
    }
    default:
        break;
    }
    if (!ok) {
        jwke_jwk_members_clear(out);
        return jwke_fail_openssl(err, "cannot export the private key");
    }
    return 0;
}
