/* One thread's call held up in the fault module (added latency) while
 * another thread calls, or the process forks:
 *   held_call fork FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL
 *     during an HSM outage, a fork while one thread's attempt to end it
 *     waits in C_Initialize: the child's copy of the token must not believe
 *     the attempt is still under way (no thread of the child makes it), or
 *     every call of the child fails with ERR_HSM_UNAVAILABLE for good.
 *   held_call fail-fast FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL
 *     during an outage, another thread's call while the attempt waits in
 *     C_Login (with the token's lock held) fails at once with
 *     ERR_HSM_UNAVAILABLE instead of waiting for the attempt.
 *   held_call login FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL
 *     a login with a wrong PIN (token:login) while one thread's call logs
 *     in again with the kept PIN, held in C_Login: the kept PIN must not be
 *     freed or replaced under that call (the wrong one is refused).
 * The fault module's settings come from the environment (JWKE_FAULTS,
 * JWKE_FAULT_LATENCY_US), which it reads at each C_Initialize. Prints
 * "other=ok held=ok" and exits 0 when the other thread (or child) and the
 * held call both did what they should. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "p11_sign.h"
#include "token_setup.h"

static jwke_p11_token *token;
static jwke_p11_key *key;
static int held_done;

static int sign_once(jwke_error *err)
{
    static const unsigned char input[] = "outage fork";
    unsigned char sig[1024];
    size_t sig_len = jwke_alg_signature_size(key->alg, key->bits);
    return jwke_p11_sign(token, key, key->alg, input, sizeof input - 1, sig, &sig_len, err);
}

static void *held(void *result)
{
    jwke_error err;
    *(int *)result = sign_once(&err);
    if (*(int *)result != 0)
        fprintf(stderr, "the held call failed: %s\n", err.message);
    __atomic_store_n(&held_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* The fault module's count of calls of `function` (counted on entry,
 * before their latency). */
static long calls(int (*stats)(char *, size_t), const char *function)
{
    char text[8192], name[64];
    stats(text, sizeof text);
    snprintf(name, sizeof name, "calls.%s ", function);
    const char *line = strstr(text, name);
    return line ? atol(line + strlen(name)) : -1;
}

/* The other thread, or a forked child: 0 when it behaved. */
static int other_fails_fast(void)
{
    jwke_error err;
    if (sign_once(&err) == 0) {
        fprintf(stderr, "a call during the attempt waited for it instead of failing fast\n");
        return -1;
    }
    if (__atomic_load_n(&held_done, __ATOMIC_SEQ_CST) ||
        strcmp(err.code ? err.code : "", "ERR_HSM_UNAVAILABLE") != 0) {
        fprintf(stderr, "a call during the attempt: %s (attempt over: %d)\n", err.message,
                __atomic_load_n(&held_done, __ATOMIC_SEQ_CST));
        return -1;
    }
    return 0;
}

/* A login with a wrong PIN beside the held one: refused, and never the
 * PIN the held call logs in with (the old code freed the kept PIN, and
 * malloc handed the same bytes back for the new one). */
static int logs_in_wrongly(const char *pin)
{
    char wrong[64];
    snprintf(wrong, sizeof wrong, "wrong-%s", pin); /* not the PIN at any length */
    jwke_error err;
    if (jwke_p11_login(token, wrong, strlen(wrong), &err) == 0) {
        fprintf(stderr, "a wrong PIN was taken\n");
        return -1;
    }
    return 0;
}

static int child_signs(void)
{
    pid_t child = fork();
    if (child == 0) {
        jwke_error err;
        setenv("JWKE_FAULT_LATENCY_US", "", 1);
        if (sign_once(&err) != 0) {
            fprintf(stderr, "the child cannot sign: %s\n", err.message);
            _exit(1);
        }
        _exit(0);
    }
    int status = 1;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 6 || (strcmp(argv[1], "fork") != 0 && strcmp(argv[1], "fail-fast") != 0 &&
                      strcmp(argv[1], "login") != 0)) {
        fprintf(stderr, "usage: held_call fork|fail-fast|login FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL\n");
        return 2;
    }
    int fork_mode = strcmp(argv[1], "fork") == 0, login_mode = strcmp(argv[1], "login") == 0;
    argv++; /* the rest as the modes share them */
    /* the next attempt to come back is due at once */
    jwke_p11_options options = {.reinit_interval_ms = 1, .reinit_interval_max_ms = 1};
    jwke_error err;
    test_token opened;
    if (test_token_open(&opened, argv[1], argv[2], argv[3], argv[4], &options) != 0)
        return 1;
    jwke_p11_module *module = opened.module;
    token = opened.token;
    key = opened.key;
    if (sign_once(&err) != 0) {
        fprintf(stderr, "the first signature failed: %s\n", err.message);
        return 1;
    }
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
    int (*stats)(char *, size_t) = library ? (int (*)(char *, size_t))dlsym(library, "jwke_faultmod_stats") : NULL;
    if (!stats) {
        fprintf(stderr, "%s is not the fault module\n", argv[1]);
        return 1;
    }

    /* The outage: the device fails, and still fails after the engine's
     * own re-initialization. (login: a re-initialization only, after which
     * the next call logs in again.) */
    setenv("JWKE_FAULTS", login_mode ? "" : "C_Sign:CKR_DEVICE_ERROR", 1);
    const char *held_in = fork_mode ? "C_Initialize" : "C_Login";
    char latency[64];
    snprintf(latency, sizeof latency, "%s:6000000", held_in);
    if (login_mode)
        setenv("JWKE_FAULT_LATENCY_US", latency, 1);
    if (jwke_p11_module_reinitialize(module, jwke_p11_module_check(module, &err), &err) != 0 ||
        (!login_mode && (sign_once(&err) == 0 ||
                         strcmp(err.code ? err.code : "", "ERR_HSM_UNAVAILABLE") != 0))) {
        fprintf(stderr, "no outage: %s\n", err.message);
        return 1;
    }

    /* The device is back, but the attempt to come back is held up in
     * C_Initialize (fork) or C_Login (fail-fast); login: the next call
     * logs in again, held up in C_Login. */
    setenv("JWKE_FAULTS", "", 1);
    setenv("JWKE_FAULT_LATENCY_US", latency, 1);
    long before = calls(stats, held_in);
    nap_ms(5); /* the 1 ms backoff has passed: the thread's call makes the attempt */
    int held_result = -1;
    pthread_t thread;
    pthread_create(&thread, NULL, held, &held_result);
    while (calls(stats, held_in) == before) {
        if (__atomic_load_n(&held_done, __ATOMIC_SEQ_CST)) {
            fprintf(stderr, "the held call never reached %s\n", held_in);
            return 1;
        }
        nap_ms(1);
    }
    int other_ok = (fork_mode    ? child_signs()
                    : login_mode ? logs_in_wrongly(argv[3])
                                 : other_fails_fast()) == 0;
    pthread_join(thread, NULL);
    printf("other=%s held=%s\n", other_ok ? "ok" : "failed", held_result == 0 ? "ok" : "failed");
    test_token_close(&opened);
    return other_ok && held_result == 0 ? 0 : 1;
}
