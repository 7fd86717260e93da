/* X.509 certificates next to keys (see x509_cert.h). */
#include "x509_cert.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "engine_limits.h"
#include "evp_sig.h"
#include "pkey.h"

/* Exactly one certificate: trailing bytes after it would be published in
 * x5c as if they were part of it. */
static X509 *parse(const unsigned char *der, size_t der_len, const char *kid, jwke_error *err)
{
    if (der_len == 0 || der_len > JWKE_CERTIFICATE_MAX_LEN) {
        jwke_fail_code(err, JWKE_ERR_CERTIFICATE_INVALID,
                       "key '%s': a certificate of %zu bytes (1 to %d bytes are accepted)", kid,
                       der_len, JWKE_CERTIFICATE_MAX_LEN);
        return NULL;
    }
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)der_len);
    if (cert && p != der + der_len) {
        X509_free(cert);
        jwke_fail_code(err, JWKE_ERR_CERTIFICATE_INVALID,
                       "key '%s': the certificate has %zu bytes after its DER", kid,
                       (size_t)(der + der_len - p));
        return NULL;
    }
    if (!cert) {
        jwke_error why;
        jwke_fail_openssl(&why, "the certificate is not DER X.509");
        jwke_fail_code(err, JWKE_ERR_CERTIFICATE_INVALID, "key '%s': %s", kid, why.message);
    }
    return cert;
}

int jwke_x509_check(const unsigned char *der, size_t der_len, const EVP_PKEY *key,
                    const char *kid, jwke_error *err)
{
    X509 *cert = parse(der, der_len, kid, err);
    if (!cert)
        return -1;
    EVP_PKEY *cert_key = X509_get0_pubkey(cert);
    int same = cert_key && EVP_PKEY_eq(cert_key, key) == 1;
    X509_free(cert);
    if (!same)
        return jwke_fail_code(err, JWKE_ERR_CERTIFICATE_MISMATCH,
                              "key '%s': the certificate's public key is not the key pair's", kid);
    return 0;
}

void jwke_x509_fields_clear(jwke_x509_fields *fields)
{
    for (int i = 0; i < JWKE_X509_FIELDS; i++) {
        OPENSSL_free(fields->der[i]);
        fields->der[i] = NULL;
    }
}

int jwke_x509_fields_of(const unsigned char *der, size_t der_len, jwke_x509_fields *out,
                        jwke_error *err)
{
    memset(out, 0, sizeof *out);
    X509 *cert = parse(der, der_len, "(new)", err);
    if (!cert)
        return -1;
    int lens[JWKE_X509_FIELDS] = {
        i2d_X509_NAME(X509_get_subject_name(cert), &out->der[JWKE_X509_SUBJECT]),
        i2d_X509_NAME(X509_get_issuer_name(cert), &out->der[JWKE_X509_ISSUER]),
        i2d_ASN1_INTEGER(X509_get0_serialNumber(cert), &out->der[JWKE_X509_SERIAL]),
    };
    X509_free(cert);
    static const char *const names[JWKE_X509_FIELDS] = {"subject", "issuer", "serial number"};
    for (int i = 0; i < JWKE_X509_FIELDS; i++) {
        if (lens[i] <= 0) {
            jwke_x509_fields_clear(out);
            return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "cannot encode a certificate's names");
        }
        out->len[i] = (size_t)lens[i];
        /* OpenSSL hands back a name as it was read, and reads some that are
         * not DER (a SEQUENCE tagged primitive): such bytes never become a
         * token's CKA_SUBJECT / CKA_ISSUER. */
        const unsigned char *p = out->der[i];
        ASN1_TYPE *value = d2i_ASN1_TYPE(NULL, &p, lens[i]);
        int whole = value && p == out->der[i] + out->len[i];
        ASN1_TYPE_free(value);
        if (!whole) {
            jwke_x509_fields_clear(out);
            return jwke_fail_code(err, JWKE_ERR_CERTIFICATE_INVALID,
                                  "the certificate's %s is not one DER value", names[i]);
        }
    }
    return 0;
}

const jwke_alg *jwke_x509_signature_alg(const EVP_PKEY *key, const jwke_alg *key_alg)
{
    if (jwke_pkey_kind(key) == JWKE_KIND_RSA) {
        if (key_alg && key_alg->kind == JWKE_KIND_RSA && key_alg->scheme == JWKE_SCHEME_RSA_PSS)
            return key_alg;
        return jwke_alg_default(JWKE_KIND_RSA, NULL);
    }
    return jwke_pkey_curve(key);
}

/* The part between `from` and `to` without the blanks around it. */
static char *trimmed(char *from, char *to)
{
    while (from < to && *from == ' ')
        from++;
    while (to > from && to[-1] == ' ')
        to--;
    *to = '\0';
    return from;
}

/* One "TYPE=VALUE" part into name: the type must be one X.509 knows and
 * the value one it takes for that type (C is two letters, ...), and each
 * refusal says which of the two is wrong. */
static int add_part(char *part, X509_NAME *name, jwke_error *err)
{
    char *equals = strchr(part, '=');
    char *type = trimmed(part, equals ? equals : part + strlen(part));
    char *value = equals ? trimmed(equals + 1, equals + 1 + strlen(equals + 1)) : NULL;
    if (!equals || !*type || !*value)
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "subject part '%.64s' is not "
                              "TYPE=VALUE (e.g. CN=issuer.example)", type);
    if (OBJ_txt2nid(type) == NID_undef)
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "subject attribute '%.32s' is "
                              "not one X.509 knows (CN, O, OU, C, L, ST, ...)", type);
    if (!X509_NAME_add_entry_by_txt(name, type, MBSTRING_UTF8, (const unsigned char *)value,
                                    -1, -1, 0)) {
        unsigned long reason = ERR_peek_last_error();
        ERR_clear_error();
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "subject attribute %.32s: the "
                              "value '%.64s' is refused (%s)", type, value,
                              reason ? ERR_reason_error_string(reason) : "not valid UTF-8?");
    }
    return 0;
}

/* "CN=a, O=b" into name, in the order written. An empty part ("CN=a,,O=b",
 * a trailing comma) is refused, not skipped: the certificate would not say
 * what was typed. */
static int parse_subject(const char *subject, X509_NAME *name, jwke_error *err)
{
    if (subject[strspn(subject, " ")] == '\0')
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "the subject is empty "
                              "(e.g. CN=issuer.example)");
    size_t len = strlen(subject);
    char *copy = malloc(len + 1);
    if (!copy)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading a subject");
    memcpy(copy, subject, len + 1);
    int result = 0;
    for (char *part = copy; part && result == 0;) {
        char *comma = strchr(part, ',');
        if (comma)
            *comma = '\0';
        result = add_part(part, name, err);
        part = comma ? comma + 1 : NULL;
    }
    free(copy);
    return result;
}

/* What `openssl req -x509` puts in a self-signed certificate. */
static int add_extensions(X509 *cert, jwke_error *err)
{
    static const struct { int nid; const char *value; } extensions[] = {
        {NID_basic_constraints, "critical,CA:TRUE"},
        {NID_subject_key_identifier, "hash"},
        {NID_authority_key_identifier, "keyid:always"},
    };
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
    for (size_t i = 0; i < sizeof extensions / sizeof extensions[0]; i++) {
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, extensions[i].nid,
                                                  extensions[i].value);
        int added = ext && X509_add_ext(cert, ext, -1);
        X509_EXTENSION_free(ext);
        if (!added)
            return jwke_fail_openssl(err, "cannot add a certificate extension");
    }
    return 0;
}

static int random_serial(X509 *cert)
{
    unsigned char bytes[8];
    if (RAND_bytes(bytes, sizeof bytes) != 1)
        return 0;
    bytes[0] = (unsigned char)((bytes[0] & 0x7f) | 0x40); /* positive, 8 bytes, never 0 */
    BIGNUM *serial = BN_bin2bn(bytes, sizeof bytes, NULL);
    int ok = serial && BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)) != NULL;
    BN_free(serial);
    return ok;
}

/* An AlgorithmIdentifier of the hash, as RSASSA-PSS-params holds it. */
static X509_ALGOR *hash_algor(const EVP_MD *md)
{
    X509_ALGOR *algor = X509_ALGOR_new();
    if (algor)
        X509_ALGOR_set_md(algor, md);
    return algor;
}

/* RSASSA-PSS-params (RFC 4055 section 3.1) for alg, DER in a SEQUENCE
 * ASN1_STRING: the hash, MGF1 over the same hash, the salt as long as the
 * hash (what JWS's PS* use, RFC 7518 section 3.5), the trailer field's
 * default. Every field is written: the defaults (SHA-1, salt 20) are not
 * ours. NULL when out of memory. */
static ASN1_STRING *pss_parameters(const jwke_alg *alg)
{
    const EVP_MD *md = jwke_alg_md(alg);
    RSA_PSS_PARAMS *pss = RSA_PSS_PARAMS_new();
    X509_ALGOR *mgf1_hash = hash_algor(md);
    ASN1_STRING *mgf1_parameter = NULL, *out = NULL;
    int ok = pss && mgf1_hash && (pss->hashAlgorithm = hash_algor(md)) != NULL &&
             (pss->maskGenAlgorithm = X509_ALGOR_new()) != NULL &&
             ASN1_item_pack(mgf1_hash, ASN1_ITEM_rptr(X509_ALGOR), &mgf1_parameter) != NULL &&
             X509_ALGOR_set0(pss->maskGenAlgorithm, OBJ_nid2obj(NID_mgf1), V_ASN1_SEQUENCE,
                             mgf1_parameter);
    if (ok)
        mgf1_parameter = NULL; /* the ALGOR owns it */
    ok = ok && (pss->saltLength = ASN1_INTEGER_new()) != NULL &&
         ASN1_INTEGER_set(pss->saltLength, (long)alg->digest->size) &&
         ASN1_item_pack(pss, ASN1_ITEM_rptr(RSA_PSS_PARAMS), &out) != NULL;
    ASN1_STRING_free(mgf1_parameter);
    X509_ALGOR_free(mgf1_hash);
    RSA_PSS_PARAMS_free(pss);
    if (!ok) {
        ASN1_STRING_free(out);
        return NULL;
    }
    return out;
}

/* The AlgorithmIdentifier of the signature, written where X.509 repeats
 * it (inside the TBSCertificate and after it). OpenSSL 3 has no setter for
 * an X509's own (X509_sign sets them only with a private key in hand), so
 * they are set through the pointers it hands out. */
static int set_signature_alg(X509 *cert, const jwke_alg *alg)
{
    int nid, parameter = V_ASN1_UNDEF;
    if (alg->scheme == JWKE_SCHEME_RSA_PSS) {
        nid = NID_rsassaPss; /* its parameters: pss_parameters, one copy per place */
        parameter = V_ASN1_SEQUENCE;
    } else if (alg->scheme == JWKE_SCHEME_EDDSA) {
        nid = NID_ED25519;
    } else {
        int key_nid = alg->kind == JWKE_KIND_RSA ? NID_rsaEncryption : NID_X9_62_id_ecPublicKey;
        if (!OBJ_find_sigid_by_algs(&nid, EVP_MD_get_type(jwke_alg_md(alg)), key_nid))
            return 0;
        if (alg->kind == JWKE_KIND_RSA)
            parameter = V_ASN1_NULL; /* RFC 4055: PKCS#1 v1.5 identifiers carry NULL */
    }
    const X509_ALGOR *outer;
    X509_get0_signature(NULL, &outer, cert);
    X509_ALGOR *places[] = {(X509_ALGOR *)X509_get0_tbs_sigalg(cert), (X509_ALGOR *)outer};
    for (int i = 0; i < 2; i++) {
        ASN1_STRING *value = parameter == V_ASN1_SEQUENCE ? pss_parameters(alg) : NULL;
        if ((parameter == V_ASN1_SEQUENCE && !value) ||
            !X509_ALGOR_set0(places[i], OBJ_nid2obj(nid), parameter, value)) {
            ASN1_STRING_free(value);
            return 0;
        }
    }
    return 1;
}

/* Everything but the signature. */
static X509 *draft(const EVP_PKEY *key, const char *subject, int days, const jwke_alg *alg,
                   jwke_error *err)
{
    if (days < 1 || days > 36500) {
        jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "a certificate is valid for 1 to 36500 "
                       "days, not %d", days);
        return NULL;
    }
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();
    if (!cert || !name) {
        X509_free(cert);
        X509_NAME_free(name);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory making a certificate");
        return NULL;
    }
    int ok = parse_subject(subject, name, err) == 0;
    if (ok && !(X509_set_version(cert, X509_VERSION_3) && random_serial(cert) &&
                X509_set_subject_name(cert, name) && X509_set_issuer_name(cert, name) &&
                X509_gmtime_adj(X509_getm_notBefore(cert), 0) &&
                X509_time_adj_ex(X509_getm_notAfter(cert), days, 0, NULL) &&
                X509_set_pubkey(cert, (EVP_PKEY *)key) && set_signature_alg(cert, alg)))
        ok = jwke_fail_openssl(err, "cannot fill in a certificate") == 0;
    if (ok)
        ok = add_extensions(cert, err) == 0;
    X509_NAME_free(name);
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

/* The signer's JWS signature as X.509 wants it in the BIT STRING: ECDSA as
 * DER, the others as they are. */
static int set_signature(X509 *cert, const jwke_alg *alg, const unsigned char *sig,
                         size_t sig_len)
{
    unsigned char *der = NULL;
    int der_len = (int)sig_len;
    if (alg->scheme == JWKE_SCHEME_ECDSA) {
        if (sig_len != 2 * alg->coordinate_size ||
            jwke_ecdsa_raw_to_der(sig, alg->coordinate_size, &der, &der_len) != 0)
            return 0;
        sig = der;
    }
    const ASN1_BIT_STRING *value;
    X509_get0_signature(&value, NULL, cert);
    ASN1_BIT_STRING *bits = (ASN1_BIT_STRING *)value; /* see set_signature_alg */
    int ok = ASN1_BIT_STRING_set(bits, (unsigned char *)sig, der_len);
    bits->flags = (bits->flags & ~0x07L) | ASN1_STRING_FLAG_BITS_LEFT; /* no unused bits */
    OPENSSL_free(der);
    return ok;
}

/* The certificate's DER, malloc'd, after checking that it parses back and
 * that its signature verifies with `key`: a signer that signed with
 * something else is caught here, not by a client. */
static int finish(X509 *cert, const EVP_PKEY *key, unsigned char **der, size_t *der_len,
                  jwke_error *err)
{
    unsigned char *encoded = NULL;
    int len = i2d_X509(cert, &encoded);
    if (len <= 0 || len > JWKE_CERTIFICATE_MAX_LEN) {
        OPENSSL_free(encoded);
        return jwke_fail_code(err, JWKE_ERR_CERTIFICATE_INVALID, "the certificate cannot be "
                              "encoded within %d bytes", JWKE_CERTIFICATE_MAX_LEN);
    }
    const unsigned char *p = encoded;
    X509 *again = d2i_X509(NULL, &p, len);
    int verified = again && X509_verify(again, (EVP_PKEY *)key) == 1;
    X509_free(again);
    *der = verified ? malloc((size_t)len) : NULL;
    if (*der)
        memcpy(*der, encoded, (size_t)len);
    OPENSSL_free(encoded);
    if (!verified)
        return jwke_fail_openssl(err, "the new certificate's signature does not verify");
    if (!*der)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory making a certificate");
    *der_len = (size_t)len;
    return 0;
}

int jwke_x509_self_signed(const EVP_PKEY *key, const jwke_alg *alg, const char *subject, int days,
                          jwke_sign_fn sign, void *signer, unsigned char **der, size_t *der_len,
                          jwke_error *err)
{
    if (!alg)
        return jwke_fail_code(err, JWKE_ERR_UNSUPPORTED_ALG, "no certificate signature for this key");
    X509 *cert = draft(key, subject, days, alg, err);
    if (!cert)
        return jwke_fail_in(err, JWKE_ERR_CERTIFICATE_INVALID);
    unsigned char *tbs = NULL;
    int tbs_len = i2d_re_X509_tbs(cert, &tbs);
    unsigned char sig[JWKE_MAX_SIGNATURE];
    size_t sig_len = sizeof sig;
    int result = 0;
    if (tbs_len <= 0)
        result = jwke_fail_openssl(err, "cannot encode the TBSCertificate");
    else if (sign(signer, tbs, (size_t)tbs_len, sig, &sig_len, err) != 0)
        result = -1;
    else if (!set_signature(cert, alg, sig, sig_len))
        result = jwke_fail_openssl(err, "cannot set the certificate's signature");
    else
        result = finish(cert, key, der, der_len, err);
    OPENSSL_free(tbs);
    X509_free(cert);
    return result == 0 ? 0 : jwke_fail_in(err, JWKE_ERR_CERTIFICATE_INVALID);
}
