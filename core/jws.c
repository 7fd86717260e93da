#include "jws.h"

#include <stdlib.h>
#include <string.h>

#include "b64url.h"


size_t jwke_jws_compact_size(size_t header_len, size_t payload_len, size_t sig_max)
{
    return header_len + 1 + jwke_b64url_encoded_len(payload_len, JWKE_B64_NOPAD) + 1 +
           jwke_b64url_encoded_len(sig_max, JWKE_B64_NOPAD) + 1;
}

int jwke_jws_compact(const char *header_b64, size_t header_len, const unsigned char *payload,
                     size_t payload_len, size_t sig_max, jwke_sign_fn sign, void *signer,
                     char *buf, size_t cap, size_t *out_len, jwke_error *err)
{
    if (sig_max > JWKE_MAX_SIGNATURE)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "signature of %zu bytes is larger than supported",
                              sig_max);
    if (cap < jwke_jws_compact_size(header_len, payload_len, sig_max))
        return jwke_fail(err, "the token does not fit its buffer");
    size_t total = cap - 1;

    /* Signing input and final token share one buffer: no copies. */
    memcpy(buf, header_b64, header_len);
    size_t used = header_len;
    buf[used++] = '.';
    long encoded = jwke_b64url_encode(payload, payload_len, buf + used, total - used,
                                      JWKE_B64_NOPAD);
    if (encoded < 0)
        return jwke_fail(err, "the payload does not fit its signing buffer");
    used += (size_t)encoded;

    unsigned char sig[JWKE_MAX_SIGNATURE];
    size_t sig_len = sig_max;
    if (sign(signer, (const unsigned char *)buf, used, sig, &sig_len, err) != 0)
        return -1;
    /* buf has room for sig_max bytes of signature, whatever a signer says */
    if (sig_len > sig_max)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "the signer reported a signature of %zu bytes, "
                              "more than the %zu bytes it was given", sig_len, sig_max);
    buf[used++] = '.';
    encoded = jwke_b64url_encode(sig, sig_len, buf + used, total - used, JWKE_B64_NOPAD);
    if (encoded < 0)
        return jwke_fail(err, "the signature does not fit its token buffer");
    used += (size_t)encoded;
    buf[used] = '\0';
    *out_len = used;
    return 0;
}
