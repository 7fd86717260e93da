/* base64url (RFC 4648 §5).
 *
 * JOSE uses it without padding (RFC 7515 §2); Hydra's encrypted key rows use
 * it with padding (Go's base64.URLEncoding). Decoding is strict in both
 * modes: no standard-alphabet characters, no whitespace, no stray padding,
 * and unused trailing bits must be zero, so every value has exactly one
 * encoding. */
#ifndef JWKE_B64URL_H
#define JWKE_B64URL_H

#include <stddef.h>

enum jwke_b64_padding { JWKE_B64_NOPAD = 0, JWKE_B64_PAD = 1 };

/* Length of the encoding of n bytes (without a terminating NUL). */
size_t jwke_b64url_encoded_len(size_t n, enum jwke_b64_padding pad);

/* Writes the encoding to out, which holds out_size bytes (no NUL written),
 * and returns its length; -1 when the encoding (jwke_b64url_encoded_len
 * bytes) would not fit, and then nothing is written. */
long jwke_b64url_encode(const unsigned char *in, size_t n, char *out, size_t out_size,
                        enum jwke_b64_padding pad);

/* Upper bound of the decoded length of n characters. */
size_t jwke_b64url_decoded_max(size_t n);

/* Decodes into out, which holds out_size bytes (jwke_b64url_decoded_max
 * is always enough). Returns the decoded length, or -1 with a static
 * reason in *why; a value that would not fit is refused before anything
 * is written. */
long jwke_b64url_decode(const char *in, size_t n, unsigned char *out, size_t out_size,
                        enum jwke_b64_padding pad, const char **why);

#endif
