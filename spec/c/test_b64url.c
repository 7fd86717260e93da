#include "b64url.h"
#include "check.h"

/* out holds DECODE_ROOM bytes */
#define DECODE_ROOM 64
static long decode(const char *in, unsigned char *out, int pad, const char **why)
{
    return jwke_b64url_decode(in, strlen(in), out, DECODE_ROOM,
                              pad ? JWKE_B64_PAD : JWKE_B64_NOPAD, why);
}

static int round_trip(const char *bytes, size_t n, const char *expected, int pad)
{
    char enc[64];
    unsigned char dec[DECODE_ROOM];
    const char *why = NULL;
    long len = jwke_b64url_encode((const unsigned char *)bytes, n, enc, sizeof enc - 1,
                                  pad ? JWKE_B64_PAD : JWKE_B64_NOPAD);
    if (len < 0)
        return 0;
    enc[len] = '\0';
    if (strcmp(enc, expected) != 0 || (size_t)len != jwke_b64url_encoded_len(n, pad))
        return 0;
    long got = decode(enc, dec, pad, &why);
    return got == (long)n && memcmp(dec, bytes, n) == 0;
}

int main(void)
{
    /* RFC 4648 §10 vectors, URL alphabet. */
    CHECK(round_trip("", 0, "", 0));
    CHECK(round_trip("f", 1, "Zg", 0));
    CHECK(round_trip("fo", 2, "Zm8", 0));
    CHECK(round_trip("foo", 3, "Zm9v", 0));
    CHECK(round_trip("foob", 4, "Zm9vYg", 0));
    CHECK(round_trip("fooba", 5, "Zm9vYmE", 0));
    CHECK(round_trip("foobar", 6, "Zm9vYmFy", 0));
    CHECK(round_trip("f", 1, "Zg==", 1));
    CHECK(round_trip("fo", 2, "Zm8=", 1));
    CHECK(round_trip("\xfb\xff", 2, "-_8", 0)); /* URL alphabet, not + / */

    unsigned char out[DECODE_ROOM];
    const char *why = NULL;
    CHECK(decode("Zm8+", out, 0, &why) < 0);            /* standard alphabet */
    CHECK(decode("Zm8/", out, 0, &why) < 0);
    CHECK(decode("Zm8=", out, 0, &why) < 0);            /* padding where none is allowed */
    CHECK(decode("Z", out, 0, &why) < 0);               /* impossible length */
    CHECK(decode("Zh", out, 0, &why) < 0);              /* non-zero trailing bits */
    CHECK(strcmp(why, "non-zero trailing bits") == 0);
    CHECK(decode("Zm 8", out, 0, &why) < 0);            /* whitespace */
    CHECK(decode("Zm8", out, 1, &why) < 0);             /* missing padding */
    CHECK(decode("Zm9v====", out, 1, &why) < 0);        /* too much padding */
    CHECK(decode("Zg=a", out, 1, &why) < 0);            /* padding in the middle */
    CHECK(decode("Zm9v", out, 1, &why) == 3);

    /* A value larger than the buffer is refused before a byte is written. */
    unsigned char small[4] = {0xaa, 0xaa, 0xaa, 0xaa};
    CHECK(jwke_b64url_decode("Zm9vYmE", 7, small, 3, JWKE_B64_NOPAD, &why) < 0);
    CHECK(small[0] == 0xaa && small[3] == 0xaa);
    CHECK(jwke_b64url_decode("Zm9vYg==", 8, small, 3, JWKE_B64_PAD, &why) < 0);
    CHECK(jwke_b64url_decode("Zm9vYg", 6, small, 4, JWKE_B64_NOPAD, &why) == 4);
    CHECK(jwke_b64url_decode("Zm9vYg==", 8, small, 4, JWKE_B64_PAD, &why) == 4);

    /* An encoding larger than its buffer is refused, nothing written; one
     * that fits exactly is written. */
    char text[8];
    memset(text, '#', sizeof text);
    CHECK(jwke_b64url_encode((const unsigned char *)"foob", 4, text, 5, JWKE_B64_NOPAD) == -1);
    CHECK(jwke_b64url_encode((const unsigned char *)"foob", 4, text, 7, JWKE_B64_PAD) == -1);
    CHECK(memcmp(text, "########", sizeof text) == 0);
    CHECK(jwke_b64url_encode((const unsigned char *)"foob", 4, text, 6, JWKE_B64_NOPAD) == 6);
    CHECK(memcmp(text, "Zm9vYg##", sizeof text) == 0);
    CHECK(jwke_b64url_encode((const unsigned char *)"", 0, text, 0, JWKE_B64_PAD) == 0);
    return check_summary();
}
