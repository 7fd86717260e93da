/* The algorithm table drives what C_Sign gets: every row prepares the data
 * its mechanism wants, and a digest the table does not describe fully is an
 * error, never a guess. */
#include <string.h>

#include "check.h"
#include "p11_sign.h"

int main(void)
{
    static const unsigned char input[] = "header.payload";
    jwke_error err;
    jwke_p11_prepared prepared;

    for (size_t i = 0; i < jwke_alg_count(); i++) {
        const jwke_alg *alg = jwke_alg_at(i);
        CHECK(jwke_alg_by_name(alg->name) == alg);
        CHECK(jwke_p11_prepare_sign(alg, input, sizeof input - 1, &prepared, &err) == 0);
        CHECK(prepared.mechanism.mechanism == alg->sign_mechanism.type);
        if (alg->scheme == JWKE_SCHEME_EDDSA) {
            CHECK(prepared.data == input && prepared.data_len == sizeof input - 1);
            continue;
        }
        size_t prefix = alg->scheme == JWKE_SCHEME_RSA_PKCS1 ? alg->digest->digest_info_len : 0;
        CHECK(prepared.data_len == prefix + alg->digest->size);
        CHECK(memcmp(prepared.data, alg->digest->digest_info, prefix) == 0);
        if (alg->scheme == JWKE_SCHEME_RSA_PSS) {
            CHECK(prepared.pss.hashAlg == alg->digest->mechanism.type);
            CHECK(prepared.pss.mgf == alg->digest->mgf1);
            CHECK(prepared.pss.sLen == alg->digest->size);
        }
        if (alg->curve)
            CHECK(jwke_alg_for_curve(alg->curve) == alg && jwke_alg_for_curve_nid(alg->curve_nid) == alg);
    }
    CHECK(jwke_alg_default(JWKE_KIND_RSA, NULL) == jwke_alg_by_name("RS256"));
    CHECK(jwke_alg_default(JWKE_KIND_EC, "P-521") == jwke_alg_by_name("ES512"));
    CHECK(jwke_alg_default(JWKE_KIND_EC, "P-192") == NULL);

    /* A digest without a DigestInfo prefix or a PKCS#11 hash: refused for
     * the schemes that need them, whatever its size. */
    jwke_digest bare = *jwke_digest_by_name("SHA-384");
    bare.digest_info = NULL;
    bare.digest_info_len = 0;
    bare.mechanism = (jwke_mechanism){0, NULL};
    jwke_alg rs = *jwke_alg_by_name("RS384"), ps = *jwke_alg_by_name("PS384");
    rs.digest = &bare;
    ps.digest = &bare;
    CHECK(jwke_p11_prepare_sign(&rs, input, sizeof input - 1, &prepared, &err) != 0);
    CHECK(strstr(err.message, "no usable digest") != NULL);
    CHECK(jwke_p11_prepare_sign(&ps, input, sizeof input - 1, &prepared, &err) != 0);
    rs.digest = NULL;
    CHECK(jwke_p11_prepare_sign(&rs, input, sizeof input - 1, &prepared, &err) != 0);
    CHECK(jwke_digest_by_name("SHA-224") == NULL);
    return check_summary();
}
