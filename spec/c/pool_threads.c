/* Many threads signing through one token with a small session pool: the
 * pool must bound the sessions, make threads wait instead of failing, and
 * every signature must verify.
 *   pool_threads MODULE TOKEN_LABEL PIN KEY_LABEL THREADS SIGNATURES MAX_SESSIONS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evp_sig.h"
#include "p11_keys.h"
#include "p11_map.h"
#include "p11_sign.h"
#include "p11_token.h"

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
                                .reinit_interval_ms = 1000};
    jwke_error err;

    jwke_p11_module *module = jwke_p11_module_acquire(argv[1], NULL, &err);
    jwke_p11_slot *slots;
    size_t count;
    if (!module || jwke_p11_list_slots(module, &slots, &count, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    size_t s = 0;
    while (s < count && strcmp(slots[s].label, argv[2]) != 0)
        s++;
    if (s == count) {
        fprintf(stderr, "no token %s\n", argv[2]);
        return 1;
    }
    token = jwke_p11_token_open(module, slots[s].id, slots[s].label, slots[s].serial, &options, &err);
    size_t n_keys = 0;
    if (!token || jwke_p11_login(token, argv[3], strlen(argv[3]), &err) != 0 ||
        jwke_p11_load_set(token, argv[4], strlen(argv[4]), NULL, 0, 2048, &key, &n_keys, &err) != 0 ||
        n_keys != 1) {
        fprintf(stderr, "setup failed: %s\n", n_keys ? err.message : "no key");
        return 1;
    }

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
    jwke_p11_keys_free(key, n_keys);
    jwke_p11_token_close(token);
    jwke_p11_module_release(module);
    free(slots);
    free(ids);
    return failures ? 1 : 0;
}
