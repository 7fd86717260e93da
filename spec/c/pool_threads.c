/* Many threads signing through one token with a small session pool: the
 * pool must bound the sessions, make threads wait instead of failing, and
 * every signature must verify.
 *   pool_threads MODULE TOKEN_LABEL PIN KEY_LABEL THREADS SIGNATURES MAX_SESSIONS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evp_sig.h"
#include "p11_sign.h"
#include "token_setup.h"

static jwke_p11_token *token;
static jwke_p11_key *key;
static int signatures_per_thread;
static int failures;
static pthread_mutex_t failures_lock = PTHREAD_MUTEX_INITIALIZER;

static void *signer(void *arg)
{
    const jwke_alg *alg = key->alg;
    char input[64];
    for (int i = 0; i < signatures_per_thread; i++) {
        int n = snprintf(input, sizeof input, "thread %ld signature %d", (long)(size_t)arg, i);
        unsigned char sig[1024];
        size_t sig_len = jwke_alg_signature_size(alg, key->bits);
        jwke_error err;
        int ok = jwke_p11_sign(token, key, alg, (unsigned char *)input, (size_t)n, sig, &sig_len,
                               &err) == 0 &&
                 jwke_evp_verify(key->public_key, alg, (unsigned char *)input, (size_t)n, sig,
                                 sig_len, &err) == 1;
        if (!ok) {
            pthread_mutex_lock(&failures_lock);
            if (failures++ < 5)
                fprintf(stderr, "signature failed: %s\n", err.message);
            pthread_mutex_unlock(&failures_lock);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: pool_threads MODULE TOKEN_LABEL PIN KEY_LABEL THREADS SIGNATURES "
                        "MAX_SESSIONS\n");
        return 2;
    }
    int threads = atoi(argv[5]);
    signatures_per_thread = atoi(argv[6]);
    jwke_p11_options options = {.max_sessions = atoi(argv[7]), .session_wait_ms = 10000,
                                .reinit_interval_ms = 1000, .reinit_interval_max_ms = 2000};
    test_token opened;
    if (test_token_open(&opened, argv[1], argv[2], argv[3], argv[4], &options) != 0)
        return 1;
    token = opened.token;
    key = opened.key;

    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    for (long i = 0; i < threads; i++)
        pthread_create(&ids[i], NULL, signer, (void *)(size_t)i);
    for (int i = 0; i < threads; i++)
        pthread_join(ids[i], NULL);

    jwke_p11_stats stats;
    jwke_p11_token_stats(token, &stats);
    printf("signatures=%d failures=%d sessions_opened=%lu sessions_open=%d max_sessions=%d "
           "session_waits=%lu\n",
           threads * signatures_per_thread, failures, stats.pool.sessions_opened,
           stats.pool.sessions_open, stats.pool.max_sessions, stats.pool.session_waits);
    test_token_close(&opened);
    free(ids);
    return failures ? 1 : 0;
}
