/* What the C peers of peers.sh share: clocks, base64url, the claims every
 * peer signs (iat/exp from the clock per token, as a host does), and the
 * loop protocol: warm up, sign for SECONDS (or exactly N tokens when
 * SECONDS is -N), print "rate N" (wall clock), "cpu_rate N" (the process's
 * CPU time) and "token JWT". Header-only so each peer is one compile
 * command. */
#ifndef PEERS_JWT_COMMON_H
#define PEERS_JWT_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double peer_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
#define peer_now() peer_clock(CLOCK_MONOTONIC)

static size_t peer_b64url(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = abc[v >> 6 & 63];
        out[o++] = abc[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = abc[v >> 6 & 63];
    }
    out[o] = 0;
    return o;
}

/* header.payload for this token into buf; returns its length. The header
 * is encoded once by the caller (as any careful peer caches it). */
static size_t peer_signing_input(const char *header_b64, char *buf)
{
    char claims[256];
    long now = (long)time(NULL);
    int n = snprintf(claims, sizeof claims,
                     "{\"iss\":\"https://issuer.example\",\"sub\":\"user-1234567890\",\"aud\":\"client-app\","
                     "\"scope\":\"openid profile\",\"iat\":%ld,\"exp\":%ld}",
                     now, now + 300);
    size_t h = strlen(header_b64);
    memcpy(buf, header_b64, h);
    buf[h] = '.';
    return h + 1 + peer_b64url((const unsigned char *)claims, (size_t)n, buf + h + 1);
}

static void peer_header(const char *alg, const char *kid, char *out)
{
    char json[128];
    int n = snprintf(json, sizeof json, "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"JWT\"}", alg, kid);
    peer_b64url((const unsigned char *)json, (size_t)n, out);
}

/* sign(ctx, header_b64, token) writes one complete compact JWT into token
 * and returns 0, or nonzero on failure. */
typedef int (*peer_sign_fn)(void *ctx, const char *header_b64, char *token);

static int peer_run(peer_sign_fn sign, void *ctx, const char *alg, const char *kid, double seconds)
{
    char header[128], token[4096];
    peer_header(alg, kid, header);
    for (int i = 0; i < 20; i++)
        if (sign(ctx, header, token) != 0)
            return 1;
    long ops = 0;
    double start = peer_now(), elapsed = 0, cpu_start = peer_clock(CLOCK_PROCESS_CPUTIME_ID);
    if (seconds < 0) { /* -N: exactly N tokens, for counting instructions */
        for (; ops < (long)-seconds; ops++)
            if (sign(ctx, header, token) != 0)
                return 1;
        elapsed = peer_now() - start;
    }
    while (elapsed < seconds) {
        for (int i = 0; i < 8; i++, ops++)
            if (sign(ctx, header, token) != 0)
                return 1;
        elapsed = peer_now() - start;
    }
    printf("rate %.1f\ncpu_rate %.1f\ntoken %s\n", (double)ops / elapsed,
           (double)ops / (peer_clock(CLOCK_PROCESS_CPUTIME_ID) - cpu_start), token);
    return 0;
}

#endif
