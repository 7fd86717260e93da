/* A fork while one thread is trying to end an HSM outage: the child's copy
 * of the token must not believe that attempt is still under way (no thread
 * of the child makes it), or every call of the child fails with
 * ERR_HSM_UNAVAILABLE for good.
 *   outage_fork FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL
 * The fault module's settings come from the environment (JWKE_FAULTS,
 * JWKE_FAULT_LATENCY_US), which it reads at each C_Initialize. Prints
 * "child=ok attempt=ok" and exits 0 when both signed. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "p11_keys.h"
#include "p11_map.h"
#include "p11_sign.h"
#include "p11_token.h"

static jwke_p11_token *token;
static jwke_p11_key *key;
static int attempt_done;

static int sign_once(jwke_error *err)
{
    static const unsigned char input[] = "outage fork";
    unsigned char sig[1024];
    size_t sig_len = jwke_alg_signature_size(key->alg, key->bits);
    return jwke_p11_sign(token, key, key->alg, input, sizeof input - 1, sig, &sig_len, err);
}

static void *attempt(void *result)
{
    jwke_error err;
    *(int *)result = sign_once(&err);
    if (*(int *)result != 0)
        fprintf(stderr, "the attempt to come back failed: %s\n", err.message);
    __atomic_store_n(&attempt_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* The fault module's count of C_Initialize calls (entered, latency included). */
static long initialize_calls(int (*stats)(char *, size_t))
{
    char text[8192];
    stats(text, sizeof text);
    const char *line = strstr(text, "calls.C_Initialize ");
    return line ? atol(line + strlen("calls.C_Initialize ")) : -1;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: outage_fork FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL\n");
        return 2;
    }
    /* the next attempt to come back is due at once */
    jwke_p11_options options = {.reinit_interval_ms = 1, .reinit_interval_max_ms = 1};
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
    size_t n_keys = 0;
    token = s < count ? jwke_p11_token_open(module, slots[s].id, slots[s].label, slots[s].serial,
                                            &options, &err) : NULL;
    if (!token || jwke_p11_login(token, argv[3], strlen(argv[3]), &err) != 0 ||
        jwke_p11_load_set(token, argv[4], strlen(argv[4]), NULL, 0, 2048, &key, &n_keys, &err) != 0 ||
        n_keys != 1 || sign_once(&err) != 0) {
        fprintf(stderr, "setup failed: %s\n", token && n_keys ? err.message : "no token or key");
        return 1;
    }
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
    int (*stats)(char *, size_t) = library ? (int (*)(char *, size_t))dlsym(library, "jwke_faultmod_stats") : NULL;
    if (!stats) {
        fprintf(stderr, "%s is not the fault module\n", argv[1]);
        return 1;
    }

    /* The outage: the device fails, and still fails after the engine's
     * own re-initialization. */
    setenv("JWKE_FAULTS", "C_Sign:CKR_DEVICE_ERROR", 1);
    if (jwke_p11_module_reinitialize(module, &err) != 0 || sign_once(&err) == 0 ||
        strcmp(err.code ? err.code : "", "ERR_HSM_UNAVAILABLE") != 0) {
        fprintf(stderr, "no outage: %s\n", err.message);
        return 1;
    }

    /* The device is back, but the attempt to come back takes a while in
     * C_Initialize; the fork happens while that thread is in it. */
    setenv("JWKE_FAULTS", "", 1);
    setenv("JWKE_FAULT_LATENCY_US", "C_Initialize:3000000", 1);
    long before = initialize_calls(stats);
    nap_ms(5); /* the 1 ms backoff has passed: the thread's call makes the attempt */
    int attempt_result = -1;
    pthread_t thread;
    pthread_create(&thread, NULL, attempt, &attempt_result);
    while (initialize_calls(stats) == before) {
        if (__atomic_load_n(&attempt_done, __ATOMIC_SEQ_CST)) {
            fprintf(stderr, "the thread's call made no attempt to come back\n");
            return 1;
        }
        nap_ms(1);
    }

    pid_t child = fork();
    if (child == 0) {
        setenv("JWKE_FAULT_LATENCY_US", "", 1);
        if (sign_once(&err) != 0) {
            fprintf(stderr, "the child cannot sign: %s\n", err.message);
            _exit(1);
        }
        _exit(0);
    }
    int status = 1;
    waitpid(child, &status, 0);
    pthread_join(thread, NULL);
    int child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("child=%s attempt=%s\n", child_ok ? "ok" : "failed", attempt_result == 0 ? "ok" : "failed");
    jwke_p11_keys_free(key, n_keys);
    jwke_p11_token_close(token);
    jwke_p11_module_release(module);
    free(slots);
    return child_ok && attempt_result == 0 ? 0 : 1;
}
