#include "b64url.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63 for alphabet characters, 0xff for everything else. */
static unsigned char decode_table[256];
static int decode_table_ready;

static void build_decode_table(void)
{
    for (int i = 0; i < 256; i++)
        decode_table[i] = 0xff;
    for (int i = 0; i < 64; i++)
        decode_table[(unsigned char)alphabet[i]] = (unsigned char)i;
    decode_table_ready = 1;
}

size_t jwke_b64url_encoded_len(size_t n, enum jwke_b64_padding pad)
{
    if (pad)
        return (n + 2) / 3 * 4;
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

size_t jwke_b64url_encode(const unsigned char *in, size_t n, char *out,
                          enum jwke_b64_padding pad)
{
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        if (pad) { *o++ = '='; *o++ = '='; }
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        if (pad) *o++ = '=';
    }
    return (size_t)(o - out);
}

size_t jwke_b64url_decoded_max(size_t n)
{
    return n / 4 * 3 + 3;
}

long jwke_b64url_decode(const char *in, size_t n, unsigned char *out,
                        enum jwke_b64_padding pad, const char **why)
{
    if (!decode_table_ready)
        build_decode_table();

    if (pad) {
        if (n % 4 != 0) {
            *why = "length is not a multiple of 4";
            return -1;
        }
        /* Strip at most two '=' and decode the rest as unpadded. */
        size_t padding = 0;
        while (padding < 2 && n > 0 && in[n - 1] == '=') {
            n--;
            padding++;
        }
        if (n % 4 == 0 && padding > 0) {
            *why = "unnecessary padding";
            return -1;
        }
        if (padding != (4 - n % 4) % 4) {
            *why = "missing padding";
            return -1;
        }
    }
    if (n % 4 == 1) {
        *why = "impossible length";
        return -1;
    }

    unsigned char *o = out;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char d = decode_table[(unsigned char)in[i]];
        if (d == 0xff) {
            *why = in[i] == '=' ? "unexpected padding" : "invalid character";
            return -1;
        }
        acc = (acc << 6 | d) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(acc >> bits);
        }
    }
    /* Leftover bits must be zero, otherwise two strings decode alike. */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        *why = "non-zero trailing bits";
        return -1;
    }
    return (long)(o - out);
}
