#include "check.h"
#include "ec_der.h"

int main(void)
{
    jwke_error err;
    const unsigned char p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    const unsigned char ed_oid[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    const unsigned char ed_name[] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's',
                                     '2', '5', '5', '1', '9'};
    const unsigned char p192[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01};

    CHECK(jwke_ec_params_curve(p256, sizeof p256, &err) == jwke_alg_by_name("ES256"));
    CHECK(jwke_ec_params_curve(ed_oid, sizeof ed_oid, &err) == jwke_alg_by_name("EdDSA"));
    CHECK(jwke_ec_params_curve(ed_name, sizeof ed_name, &err) == jwke_alg_by_name("EdDSA"));
    CHECK(jwke_ec_params_curve(p192, sizeof p192, &err) == NULL);
    CHECK(strstr(err.message, "not supported") != NULL);
    CHECK(jwke_ec_params_curve(p256, 3, &err) == NULL);

    /* CKA_EC_POINT: wrapped and raw forms of the same P-256 point. The raw
     * point's x starts with 0x3f so that it also looks like a DER header. */
    unsigned char raw[65], wrapped[67];
    raw[0] = 0x04;
    for (int i = 1; i < 65; i++)
        raw[i] = (unsigned char)i;
    raw[1] = 0x3f;
    wrapped[0] = 0x04;
    wrapped[1] = 65;
    memcpy(wrapped + 2, raw, 65);
    const jwke_alg *es256 = jwke_alg_by_name("ES256");
    const unsigned char *point;
    size_t len;
    CHECK(jwke_ec_point_unwrap(es256, wrapped, sizeof wrapped, &point, &len, &err) == 0);
    CHECK(len == 65 && memcmp(point, raw, 65) == 0);
    CHECK(jwke_ec_point_unwrap(es256, raw, sizeof raw, &point, &len, &err) == 0);
    CHECK(len == 65 && point == raw);
    CHECK(jwke_ec_point_unwrap(es256, raw, 64, &point, &len, &err) != 0); /* truncated */
    raw[0] = 0x02;                                                         /* compressed */
    CHECK(jwke_ec_point_unwrap(es256, raw, sizeof raw, &point, &len, &err) != 0);

    /* P-521 needs the long DER length form (0x81). */
    unsigned char p521[3 + 133];
    p521[0] = 0x04;
    p521[1] = 0x81;
    p521[2] = 133;
    p521[3] = 0x04;
    memset(p521 + 4, 0xab, 132);
    CHECK(jwke_ec_point_unwrap(jwke_alg_by_name("ES512"), p521, sizeof p521, &point, &len, &err) == 0);
    CHECK(len == 133);

    /* Ed25519: 32 raw bytes or an OCTET STRING around them. */
    unsigned char ed[34] = {0x04, 0x20};
    const jwke_alg *eddsa = jwke_alg_by_name("EdDSA");
    CHECK(jwke_ec_point_unwrap(eddsa, ed, 34, &point, &len, &err) == 0 && len == 32);
    CHECK(jwke_ec_point_unwrap(eddsa, ed + 2, 32, &point, &len, &err) == 0 && len == 32);
    CHECK(jwke_ec_point_unwrap(eddsa, ed, 33, &point, &len, &err) != 0);
    return check_summary();
}
