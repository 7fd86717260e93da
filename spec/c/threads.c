/* The threaded scenarios of the PKCS#11 layer, run in the ThreadSanitizer
 * and AddressSanitizer builds (spec/c/threads.sh sets up a token and runs
 * each mode in a process of its own):
 *   threads MODE FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL
 * MODE:
 *   signers        6 threads sign on one token with a pool of 2 sessions
 *                  while another reads stats, events and the outage state
 *                  (what engine:health() reads)
 *   list-reinit    one thread signs on a token whose every C_Sign answers
 *                  CKR_DEVICE_ERROR, so its recovery re-initializes the
 *                  module over and over; another lists the slots in a loop
 *                  (module:slots(), and jwkengine.slots: acquire, list,
 *                  release), a third reads the health of the token
 *   forced-reinit  3 threads sign while another re-initializes the module
 *                  every few milliseconds: every signature succeeds
 *   fork           threads sign, then 4 forked children sign on 2 threads
 *                  each with the parent's token, then the parent again
 *   login          4 threads sign while 3 C_SignInit calls, 250 apart, answer
 *                  CKR_USER_NOT_LOGGED_IN: each recovers by logging in again
 *                  (while the others sign) and finding its key again
 *   logged-out     (one thread) the token logs out behind the engine's
 *                  back, as one does when it closed every idle session,
 *                  while a pooled session stays open: a key found again
 *                  there, and a set read there, must log in again rather
 *                  than read "not on the token"
 *   idle           3 threads sign with pauses of up to 400 ms on a token
 *                  that closes sessions idle 150 ms (hsm.session_idle_max
 *                  40 ms): sessions expire, in the pool and all at once
 *                  (the token logs out), and every signature succeeds.
 *                  The token's clock is far above scheduling delays: with
 *                  30 ms, a loaded machine (ThreadSanitizer, load 10 on 2
 *                  cores) stalled a thread past it between a repair and
 *                  its one retry, which no engine can promise to win (a
 *                  real token: 30 s)
 *   open-session   while one signer's new pooled session is held up 1.5 s
 *                  in C_OpenSession, the token's lock is free: its stats
 *                  (what health reads) answer at once
 *   acquire-release  with no engine holding the module, 8 threads each
 *                  acquire it, list the slots and release it in a loop
 *                  (jwkengine.slots beside an engine that opens or
 *                  closes): the last release finalizes and unloads the
 *                  module while the next acquire loads it again
 * The fault module reads its faults from the environment (set here before
 * the module is loaded). Prints "MODE: ok ..." and exits 0 when every
 * check held; a sanitizer report fails the run (threads.sh). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "evp_sig.h"
#include "p11_data.h"
#include "p11_map.h"
#include "p11_sign.h"
#include "token_setup.h"

static test_token opened;
static const char *module_path;
static int stop;           /* atomic: the timed threads end */
static int failures;       /* atomic */
static int expected_fail;  /* list-reinit: signing fails, by design */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Replaces the fault module's control file (JWKE_FAULT_CONTROL, set by
 * threads.sh), which it reads again on its next call. */
static void set_control(const char *text)
{
    const char *path = getenv("JWKE_FAULT_CONTROL");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void fail(const char *what, const jwke_error *err)
{
    if (__atomic_fetch_add(&failures, 1, __ATOMIC_SEQ_CST) < 5)
        fprintf(stderr, "%s: %s\n", what, err ? err->message : "");
}

/* One signature, verified on the host: 0 when it verified. */
static int sign_once(int n, jwke_error *err)
{
    jwke_p11_key *key = opened.key;
    char input[64];
    int len = snprintf(input, sizeof input, "signature %d", n);
    unsigned char sig[1024];
    size_t sig_len = jwke_alg_signature_size(key->alg, key->bits);
    if (jwke_p11_sign(opened.token, key, key->alg, (unsigned char *)input, (size_t)len, sig,
                      &sig_len, err) != 0)
        return -1;
    return jwke_evp_verify(key->public_key, key->alg, (unsigned char *)input, (size_t)len, sig,
                           sig_len, err) == 1 ? 0 : -1;
}

/* C_Logout on a session of our own (the login is the token's, so every
 * session of the process is logged out), closed after: the engine's pooled
 * session stays open and sees a logged-out token. */
static void log_out_behind_the_engine(void)
{
    jwke_p11_module_enter(opened.module);
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(opened.token);
    CK_SESSION_HANDLE own;
    CK_RV rv = fn->C_OpenSession(jwke_p11_token_slot(opened.token), CKF_SERIAL_SESSION, NULL, NULL,
                                 &own);
    if (rv == CKR_OK) {
        rv = fn->C_Logout(own);
        fn->C_CloseSession(own);
    }
    jwke_p11_module_leave(opened.module);
    if (rv != CKR_OK)
        fail("could not log the token out", NULL);
}

typedef struct signer_args {
    int signatures; /* 0: until stop */
    int pause_ms;   /* up to this long between two signatures */
} signer_args;

static void *signer(void *arg)
{
    const signer_args *a = arg;
    unsigned seed = (unsigned)(size_t)pthread_self();
    for (int i = 0; a->signatures == 0 || i < a->signatures; i++) {
        if (a->signatures == 0 && __atomic_load_n(&stop, __ATOMIC_SEQ_CST))
            break;
        jwke_error err;
        if (sign_once(i, &err) != 0 && !expected_fail)
            fail("a signature failed", &err);
        if (a->pause_ms)
            nap_ms(rand_r(&seed) % (unsigned)(a->pause_ms + 1));
    }
    return NULL;
}

/* What engine:health() and engine:stats() read, in a loop. */
static void *health(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_SEQ_CST)) {
        jwke_p11_stats stats;
        char events[JWKE_EVENT_QUEUE][JWKE_EVENT_SIZE], cause[128];
        long long retry_in;
        jwke_p11_token_stats(opened.token, &stats);
        jwke_p11_take_events(opened.token, events, JWKE_EVENT_QUEUE);
        jwke_p11_token_outage(opened.token, &retry_in, cause, sizeof cause);
        nap_ms(1);
    }
    return NULL;
}

static int listings;

/* jwkengine.slots(library): acquire the module, list, release. */
static void slots_of_library(void)
{
    jwke_error err;
    jwke_p11_slot *slots;
    size_t count;
    jwke_p11_module *module = jwke_p11_module_acquire(module_path, NULL, &err);
    if (!module || jwke_p11_list_slots(module, &slots, &count, &err) != 0)
        fail("jwkengine.slots failed", &err);
    else
        free(slots);
    jwke_p11_module_release(module);
    __atomic_add_fetch(&listings, 1, __ATOMIC_SEQ_CST);
}

/* module:slots() on the shared module, and jwkengine.slots(library), which
 * acquires the module (the same one), lists and releases it. */
static void *lister(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_SEQ_CST)) {
        jwke_error err;
        jwke_p11_slot *slots;
        size_t count;
        if (jwke_p11_list_slots(opened.module, &slots, &count, &err) != 0)
            fail("listing the slots failed", &err);
        else
            free(slots);
        slots_of_library();
    }
    return NULL;
}

/* jwkengine.slots(library) with nothing else holding the module: every
 * acquire may load it and every release may be the last one. */
static void *acquirer(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_SEQ_CST))
        slots_of_library();
    return NULL;
}

#ifndef THREADS_NO_FORCED_REINIT
static int reinits;

static void *reinitializer(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_SEQ_CST)) {
        jwke_error err;
        unsigned epoch = jwke_p11_module_check(opened.module, &err);
        if (epoch == 0 || jwke_p11_module_reinitialize(opened.module, epoch, &err) != 0)
            fail("re-initializing failed", &err);
        __atomic_add_fetch(&reinits, 1, __ATOMIC_SEQ_CST);
        nap_ms(3);
    }
    return NULL;
}
#endif

/* The fault module's count of calls of function since it was loaded. */
static long faultmod_calls(const char *function)
{
    void *library = dlopen(module_path, RTLD_NOW | RTLD_NOLOAD);
    int (*stats)(char *, size_t) =
        library ? (int (*)(char *, size_t))dlsym(library, "jwke_faultmod_stats") : NULL;
    if (!stats)
        return -1;
    char text[16384], name[64];
    stats(text, sizeof text);
    snprintf(name, sizeof name, "calls.%s ", function);
    const char *line = strstr(text, name);
    dlclose(library);
    return line ? atol(line + strlen(name)) : -1;
}

/* Starts n threads of fn (each with args), then the extra ones; waits ms
 * (or for the signers when ms is 0), stops the timed ones, joins all. */
static void run_threads(int n, void *(*fn)(void *), signer_args *args, int ms,
                        void *(**extra)(void *), int n_extra)
{
    pthread_t ids[16];
    __atomic_store_n(&stop, 0, __ATOMIC_SEQ_CST);
    for (int i = 0; i < n; i++)
        pthread_create(&ids[i], NULL, fn, args);
    for (int i = 0; i < n_extra; i++)
        pthread_create(&ids[n + i], NULL, extra[i], NULL);
    if (ms)
        nap_ms(ms);
    else
        for (int i = 0; i < n; i++)
            pthread_join(ids[i], NULL);
    __atomic_store_n(&stop, 1, __ATOMIC_SEQ_CST);
    for (int i = ms ? 0 : n; i < n + n_extra; i++)
        pthread_join(ids[i], NULL);
}

/* n signers (args) with the health reader beside them; the token's stats after. */
static jwke_p11_stats sign_with_health(int n, signer_args args)
{
    void *(*health_only[])(void *) = {health};
    run_threads(n, signer, &args, 0, health_only, 1);
    jwke_p11_stats stats;
    jwke_p11_token_stats(opened.token, &stats);
    return stats;
}

static int fork_children(int children)
{
    int bad = 0;
    pid_t pids[8];
    for (int c = 0; c < children; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            signer_args args = {50, 0};
            run_threads(2, signer, &args, 0, NULL, 0);
            _exit(__atomic_load_n(&failures, __ATOMIC_SEQ_CST) ? 1 : 0);
        }
    }
    for (int c = 0; c < children; c++) {
        int status = 1;
        waitpid(pids[c], &status, 0);
        bad += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: threads MODE FAULT_MODULE TOKEN_LABEL PIN KEY_LABEL\n");
        return 2;
    }
    const char *mode = argv[1];
    module_path = argv[2];
    jwke_p11_options options = {.max_sessions = 4, .session_wait_ms = 20000,
                                .reinit_interval_ms = 1, .reinit_interval_max_ms = 2};
    if (strcmp(mode, "signers") == 0)
        options.max_sessions = 2;
    if (strcmp(mode, "login") == 0)
        /* transient (~): no real C_Logout under the other threads' calls,
         * which SoftHSM answers with CKR_GENERAL_ERROR when it lands between
         * its own login check and the key's decryption (its race, not ours) */
        setenv("JWKE_FAULTS",
               "C_SignInit:CKR_USER_NOT_LOGGED_IN@50~;C_SignInit:CKR_USER_NOT_LOGGED_IN@300~;"
               "C_SignInit:CKR_USER_NOT_LOGGED_IN@550~", 1);
    if (strcmp(mode, "idle") == 0) {
        setenv("JWKE_FAULT_SESSION_IDLE_MS", "150", 1);
        options.session_idle_max_ms = 40;
    }
    char extra_out[96] = "";
    if (strcmp(mode, "acquire-release") == 0) {
        run_threads(8, acquirer, NULL, 1500, NULL, 0);
        int bad = __atomic_load_n(&failures, __ATOMIC_SEQ_CST);
        if (listings < 30) /* not contended enough to prove anything */
            bad++;
        printf("%s: %s failures=%d listings=%d\n", mode, bad ? "FAILED" : "ok", bad,
               __atomic_load_n(&listings, __ATOMIC_SEQ_CST));
        return bad ? 1 : 0;
    }
    if (test_token_open(&opened, module_path, argv[3], argv[4], argv[5], &options) != 0)
        return 1;

    if (strcmp(mode, "signers") == 0) {
        sign_with_health(6, (signer_args){150, 0});
    } else if (strcmp(mode, "list-reinit") == 0) {
        /* set now: the key was loaded; every later C_Initialize reads it */
        setenv("JWKE_FAULTS", "C_Sign:CKR_DEVICE_ERROR", 1);
        jwke_error err;
        unsigned epoch = jwke_p11_module_check(opened.module, &err);
#ifndef THREADS_NO_FORCED_REINIT
        jwke_p11_module_reinitialize(opened.module, epoch, &err);
#else
        jwke_p11_module_reinitialize(opened.module, &err);
        (void)epoch;
#endif
        expected_fail = 1;
        long before = faultmod_calls("C_Initialize");
        signer_args args = {0, 0};
        void *(*extra[])(void *) = {lister, health};
        run_threads(1, signer, &args, 1500, extra, 2);
        long inits = faultmod_calls("C_Initialize") - before;
        snprintf(extra_out, sizeof extra_out, " listings=%d initializations=%ld",
                 __atomic_load_n(&listings, __ATOMIC_SEQ_CST), inits);
        if (inits < 3 || listings < 3)
            fail("the scenario did not re-initialize and list often enough", NULL);
#ifndef THREADS_NO_FORCED_REINIT
    } else if (strcmp(mode, "forced-reinit") == 0) {
        signer_args args = {0, 0};
        void *(*extra[])(void *) = {reinitializer, health};
        run_threads(3, signer, &args, 1500, extra, 2);
        snprintf(extra_out, sizeof extra_out, " reinitializations=%d",
                 __atomic_load_n(&reinits, __ATOMIC_SEQ_CST));
        if (reinits < 3)
            fail("too few re-initializations", NULL);
#endif
    } else if (strcmp(mode, "fork") == 0) {
        signer_args args = {100, 0};
        run_threads(2, signer, &args, 0, NULL, 0);
        int bad = fork_children(4);
        if (bad)
            fail("a forked child could not sign", NULL);
        run_threads(2, signer, &args, 0, NULL, 0);
    } else if (strcmp(mode, "login") == 0) {
        jwke_p11_stats stats = sign_with_health(4, (signer_args){150, 0});
        snprintf(extra_out, sizeof extra_out, " login_recoveries=%lu",
                 stats.recoveries[JWKE_RECOVER_LOGIN]);
        if (stats.recoveries[JWKE_RECOVER_LOGIN] < 2)
            fail("too few login recoveries", NULL);
    } else if (strcmp(mode, "logged-out") == 0) {
        jwke_error err;
        jwke_p11_stats stats;
        if (sign_once(1, &err) != 0)
            fail("the first signature failed", &err);
        /* a private data object, as the key states are */
        static const char app[] = "jwkengine threads", label[] = "logged-out";
        if (jwke_p11_data_create(opened.token, app, label, sizeof label - 1,
                                 (const unsigned char *)"1", 1, &err) != 0)
            fail("could not create a data object", &err);
        for (int round = 0; round < 3; round++) {
            log_out_behind_the_engine();
            if (round == 2) {
                /* read as "no object", a set's key states would look never
                 * written: the search must log in again instead */
                jwke_p11_data *found = NULL;
                jwke_error *unreadable = NULL;
                size_t n = 0, n_unreadable = 0;
                if (jwke_p11_data_find(opened.token, app, label, sizeof label - 1, &found, &n,
                                       &unreadable, &n_unreadable, &err) != 0)
                    fail("reading data objects after the logout failed", &err);
                else if (n != 1)
                    fail("reading data objects after the logout did not find the object", NULL);
                jwke_p11_data_free(found, n);
                free(unreadable);
            } else if (round == 0) {
                jwke_p11_token_objects_changed(opened.token); /* the key is found again */
                if (sign_once(2, &err) != 0)
                    fail("a signature after the logout failed", &err);
            } else {
                jwke_p11_key *keys = NULL;
                size_t n = 0;
                if (jwke_p11_load_set(opened.token, opened.key->label, opened.key->label_len, NULL,
                                      0, 2048, &keys, &n, &err) != 0)
                    fail("reading the set after the logout failed", &err);
                else if (n != 1)
                    fail("reading the set after the logout did not find the key", NULL);
                jwke_p11_keys_free(keys, n);
            }
        }
        jwke_p11_token_stats(opened.token, &stats);
        snprintf(extra_out, sizeof extra_out, " login_recoveries=%lu",
                 stats.recoveries[JWKE_RECOVER_LOGIN]);
    } else if (strcmp(mode, "idle") == 0) {
        jwke_p11_stats stats = sign_with_health(3, (signer_args){12, 400});
        snprintf(extra_out, sizeof extra_out,
                 " idle_checks=%lu sessions_expired=%lu login_recoveries=%lu",
                 stats.pool.idle_checks, stats.pool.sessions_expired,
                 stats.recoveries[JWKE_RECOVER_LOGIN]);
        if (stats.pool.idle_checks == 0)
            fail("no idle session was checked", NULL);
        if (stats.pool.sessions_expired == 0)
            fail("no session expired", NULL);
    } else if (strcmp(mode, "open-session") == 0) {
        /* one signer keeps the pool's idle session (its C_Sign is slow),
         * the other opens a new one, held up in C_OpenSession */
        set_control("latency=C_OpenSession:1500000;C_Sign:300000\n");
        long before = faultmod_calls("C_OpenSession");
        signer_args args = {1, 0};
        pthread_t ids[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&ids[i], NULL, signer, &args);
        long long deadline = now_ms() + 5000;
        while (faultmod_calls("C_OpenSession") == before && now_ms() < deadline)
            nap_ms(1);
        nap_ms(20);
        long long started = now_ms();
        jwke_p11_stats stats;
        jwke_p11_token_stats(opened.token, &stats);
        long long waited = now_ms() - started;
        for (int i = 0; i < 2; i++)
            pthread_join(ids[i], NULL);
        set_control("");
        snprintf(extra_out, sizeof extra_out, " stats_waited_ms=%lld", waited);
        if (faultmod_calls("C_OpenSession") == before)
            fail("no session was opened", NULL);
        if (waited > 500)
            fail("the token's lock was held through C_OpenSession", NULL);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    test_token_close(&opened);
    int bad = __atomic_load_n(&failures, __ATOMIC_SEQ_CST);
    printf("%s: %s failures=%d%s\n", mode, bad ? "FAILED" : "ok", bad, extra_out);
    return bad ? 1 : 0;
}
