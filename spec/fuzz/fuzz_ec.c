/* The EC shapes PKCS#11 hands us (core/ec_der.c): CKA_EC_PARAMS curve
 * names, CKA_EC_POINT in DER or raw form, DER lengths; then the point as a
 * key (it must lie on the curve) and raw R || S signatures through the
 * DER conversion of the verifier (core/evp_sig.c).
 *
 * Input: a selector byte, then length-prefixed fields (fuzz_input.h). */
#include <string.h>

#include <openssl/err.h>

#include "alg.h"
#include "ec_der.h"
#include "evp_sig.h"
#include "fuzz_input.h"
#include "pkey.h"

static const char *const curve_names[] = {"P-256", "P-384", "P-521", "Ed25519"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = {data, size};
    uint8_t selector = fuzz_byte(&in);
    jwke_error err;

    size_t params_len, value_len, sig_len;
    const uint8_t *params = fuzz_field(&in, 64, &params_len);
    const uint8_t *value = fuzz_field(&in, 300, &value_len);
    const uint8_t *sig = fuzz_field(&in, 300, &sig_len);

    /* CKA_EC_PARAMS: a known curve's standard DER must name it back. */
    const jwke_alg *named = jwke_ec_params_curve(params, params_len, &err);
    if (named) {
        const unsigned char *der;
        size_t der_len;
        FUZZ_ASSERT(jwke_ec_params_der(named, &der, &der_len) == 0);
        FUZZ_ASSERT(jwke_ec_params_curve(der, der_len, &err) == named);
    }

    /* DER headers: the length must add up to the whole value. */
    size_t header = jwke_der_header_len(value, value_len, (unsigned char)(selector | 0x04));
    FUZZ_ASSERT(header == 0 || (header >= 2 && header <= 4 && header <= value_len));

    const jwke_alg *curve = named ? named : jwke_alg_for_curve(curve_names[selector % 4]);
    const unsigned char *point;
    size_t point_len;
    if (jwke_ec_point_unwrap(curve, value, value_len, &point, &point_len, &err) != 0)
        return 0;
    FUZZ_ASSERT(point >= value && point + point_len <= value + value_len);

    EVP_PKEY *pkey;
    if (curve->kind == JWKE_KIND_OKP) {
        FUZZ_ASSERT(point_len == 32);
        pkey = jwke_pkey_okp_public(curve->curve, point, point_len, &err);
    } else {
        size_t c = curve->coordinate_size;
        FUZZ_ASSERT(point_len == 1 + 2 * c && point[0] == 0x04);
        pkey = jwke_pkey_ec_public(curve->curve, point + 1, c, point + 1 + c, c, &err);
    }
    if (pkey) {
        FUZZ_ASSERT(jwke_pkey_curve(pkey) == curve);
        int ok = jwke_evp_verify(pkey, curve, sig, sig_len, sig, sig_len, &err);
        FUZZ_ASSERT(ok == 0 || ok == 1 || ok == -1);
        EVP_PKEY_free(pkey);
    }
    ERR_clear_error();
    return 0;
}
