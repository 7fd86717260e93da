/*
 * jwke_faultmod: a fault-injecting PKCS#11 module for jwkengine's tests.
 *
 * libjwke_faultmod.so is a complete PKCS#11 v2.40 module. C_GetFunctionList
 * hands out a CK_FUNCTION_LIST with every slot filled; each function forwards
 * to a real module (SoftHSM by default) loaded with dlopen, after counting the
 * call and, when configured, adding latency, simulating token removal or
 * returning an injected CKR_ code. spec/faultmod/README.md is the user's
 * guide; this comment is the reference.
 *
 * ENVIRONMENT (read by C_Initialize when the module is not initialized)
 *
 *   JWKE_FAULT_MODULE        the real module (default
 *                            /usr/lib/softhsm/libsofthsm2.so)
 *   JWKE_FAULTS              fault rules, see below
 *   JWKE_FAULT_SEED          seed of the %P coin (decimal or 0x hex; default
 *                            0x6a776b65). The sequence restarts from the seed
 *                            at each C_Initialize, control-file reload and fork.
 *   JWKE_FAULT_LATENCY_US    added latency: "C_Sign:2000;C_Login:100000";
 *                            "*:N" applies N microseconds to every function
 *   JWKE_FAULT_REMOVED       1 = the token is removed (0/1, true/false, yes/no)
 *   JWKE_FAULT_MAX_SESSIONS  N > 0: C_OpenSession fails with CKR_SESSION_COUNT
 *                            while N sessions opened through this module are
 *                            alive (0 = no limit, the default)
 *   JWKE_FAULT_TOKEN_FLAGS   CKF_USER_PIN_* names (comma-separated) ORed into
 *                            the flags C_GetTokenInfo reports, e.g.
 *                            CKF_USER_PIN_LOCKED (the PIN states a login
 *                            policy must respect)
 *   JWKE_FAULT_LENGTHS       misreported lengths, see below
 *   JWKE_FAULT_TOKEN_MAX_SESSIONS, JWKE_FAULT_SESSION_IDLE_MS,
 *   JWKE_FAULT_CORRUPT_SIGNATURE
 *                            real-HSM behaviours, see below
 *   JWKE_FAULT_FORK_STRICT   1 = a forked child gets CKR_CRYPTOKI_NOT_INITIALIZED
 *                            until it calls C_Initialize, and the sessions it
 *                            inherited are CKR_SESSION_HANDLE_INVALID, as with a
 *                            networked HSM's client library
 *   JWKE_FAULT_CONTROL       path of the control file (below)
 *   JWKE_FAULT_CONTROL_INTERVAL_MS
 *                            how often the control file is checked: 0 (the
 *                            default) = one stat(2) per PKCS#11 call, N = at
 *                            most once every N ms
 *   JWKE_FAULT_STATS         path of the stats file (below); "%p" becomes the
 *                            process id, "%%" a percent sign
 *   JWKE_FAULT_STATS_SYNC    1 = also rewrite the stats file after every call
 *                            (slow; for tests that read counts mid-process)
 *   JWKE_FAULT_VERBOSE       1 = one line on stderr per injected fault, reload
 *                            and removal/insertion
 *
 * FAULT RULES (JWKE_FAULTS, or faults= in the control file)
 *
 *   rules  := rule { ";" rule }          (newlines also separate rules)
 *   rule   := FUNCTION ":" CODE [ trigger ] [ "*" K ] [ "~" ]
 *   CODE   := a CKR_ name from p11-kit/pkcs11.h | decimal | 0xHEX (not CKR_OK)
 *   trigger:= "@" N         fail exactly the Nth call of FUNCTION
 *           | "@" N "+"     fail the Nth call and every call after it
 *           | "/" N [ "+" K ]  fail calls K, K+N, K+2N, ... (K defaults to N):
 *                           evenly spaced faults, so a soak can promise that
 *                           a retry never meets a second fault
 *           | "%" P         fail each call with probability P percent (0..100,
 *                           decimals allowed), drawn from the seeded generator
 *           | (none)        fail every call
 *   "*" K                   a firing trigger fails K consecutive calls, the
 *                           triggering one included (default 1): "@3*2" fails
 *                           calls 3 and 4; "%1*5" fails bursts of 5
 *   "~"                     transient: report the code only, without the
 *                           side effects listed below
 *
 *   e.g. JWKE_FAULTS="C_Sign:CKR_SESSION_HANDLE_INVALID@3;C_SignInit:CKR_DEVICE_ERROR%1;C_Login:CKR_PIN_INCORRECT@1"
 *
 *   Calls are counted per function from the first successful C_Initialize
 *   (later re-initializations keep counting, so a recovery never re-arms the
 *   fault it recovers from), the last control-file reload, or the fork that
 *   made this process. C_Initialize
 *   and C_Finalize counts are not restarted by C_Initialize (so that
 *   "C_Initialize:CKR_DEVICE_ERROR@2" fails the second initialization). Rules
 *   of one function are tried in order; the first that fires wins, and a
 *   burst in progress wins over every trigger. C_GetFunctionList never fails.
 *
 * WHAT AN INJECTED FAULT DOES TO THE REAL MODULE
 *
 *   The real function is not called, except where a real token would have
 *   changed state, so that the real module is left as a real token would be:
 *   - PKCS#11 says a failed C_Sign (anything but CKR_BUFFER_TOO_SMALL)
 *     terminates the active operation. An injected fault on a call that
 *     continues or finishes an operation (C_Encrypt*, C_Decrypt*, C_Digest*,
 *     C_Sign, C_SignUpdate, C_SignFinal, C_SignRecover, C_Verify*,
 *     C_VerifyRecover) therefore finishes the real operation first: single-part
 *     and final calls are forwarded into a scratch buffer (which is wiped and
 *     discarded, the caller's buffer is untouched), C_Verify/C_VerifyFinal are
 *     forwarded and their result ignored, and update calls are ended with the
 *     matching final call. Afterwards a new C_xxxInit works, the old operation
 *     is gone, exactly as after a real failure.
 *   - An injected CKR_BUFFER_TOO_SMALL on such a call keeps the operation and
 *     stores the real required length in the caller's length argument.
 *   - An injected fault on an Init call (C_SignInit, ...) does not start the
 *     operation. Dual-function updates (C_DigestEncryptUpdate, ...) and
 *     C_FindObjects are not forwarded and leave the real operation active.
 *   - Side effects (unless the rule ends in "~"): CKR_SESSION_HANDLE_INVALID
 *     and CKR_SESSION_CLOSED close the session in the real module, so the
 *     handle stays invalid for every later call, as on a real token;
 *     CKR_USER_NOT_LOGGED_IN logs the token out (real C_Logout), as an idle
 *     timeout does.
 *   - Injected PIN errors on C_Login never reach the token, so they do not
 *     count against its real retry counter.
 *
 * MISREPORTED LENGTHS (JWKE_FAULT_LENGTHS, or lengths= in the control file)
 *
 *   lengths := item { ";" item }           (newlines also separate items)
 *   item    := TARGET "=" LENGTH [ "," CODE ]
 *   TARGET  := "C_GetAttributeValue:" ATTRIBUTE (a CKA_ name or a number)
 *            | "C_Sign" | "C_FindObjects" | "C_GetSlotList"
 *   LENGTH  := "real"       the value's real length where the caller's buffer
 *                           was too small (attributes only)
 *            | N | "-" N    that length; -N is (CK_ULONG)-N
 *            | "+" N        N more than the real length or the count written
 *            | "buffer+" N  N more than the caller's buffer holds
 *   CODE                    returned instead of the real code (CKR_OK allowed)
 *
 *   After a real call that succeeded with an output buffer (for
 *   C_GetAttributeValue: CKR_OK, CKR_ATTRIBUTE_TYPE_INVALID,
 *   CKR_ATTRIBUTE_SENSITIVE or CKR_BUFFER_TOO_SMALL, on attributes the object
 *   has), the reported length is replaced; nothing is written past the
 *   caller's buffer. The first item naming a target wins; an injected fault
 *   wins over them all. Each misreport counts in injected.F.
 *
 * TOKEN REMOVAL (JWKE_FAULT_REMOVED=1, or removed=1 in the control file)
 *
 *   Every slot reports no token: C_GetSlotList(CK_TRUE, ...) lists no slot,
 *   C_GetSlotInfo clears CKF_TOKEN_PRESENT, C_GetTokenInfo, C_OpenSession,
 *   C_GetMechanismList, C_GetMechanismInfo and C_InitToken return
 *   CKR_TOKEN_NOT_PRESENT (CKR_SLOT_ID_INVALID for a slot that does not
 *   exist), C_CloseAllSessions succeeds, and every call on a session opened
 *   before returns CKR_DEVICE_REMOVED. On removal the wrapper closes those
 *   sessions in the real module (which logs the real token out, as pulling a
 *   token does). After re-insertion (removed=0) the token is back, logged out,
 *   and every handle from before the removal returns CKR_SESSION_HANDLE_INVALID
 *   for good: the wrapper gives out its own session handles, never reused, and
 *   maps them to the real module's.
 *
 *   An error caused by removal wins over an injected fault; an injected fault
 *   wins over a call that would have succeeded. A removal error still uses up
 *   the fault decided for that call (counts and bursts advance).
 *
 * REAL-HSM BEHAVIOURS (each also a control-file key, in lower case without
 * the JWKE_FAULT_ prefix)
 *
 *   JWKE_FAULT_TOKEN_MAX_SESSIONS  N > 0: C_GetTokenInfo reports
 *                            ulMaxSessionCount = ulMaxRwSessionCount = N and
 *                            ulSessionCount = ulRwSessionCount = the sessions
 *                            alive through this module, as a
 *                            networked HSM does. Only reported: the limit is
 *                            enforced by max_sessions.
 *   JWKE_FAULT_SESSION_IDLE_MS  N > 0: a session not used for more than N ms
 *                            is closed by the token (YubiHSM 2: 30 s); the
 *                            next call on it answers CKR_SESSION_HANDLE_INVALID
 *                            (counted in expired_sessions, per count window). Checked on
 *                            every call, for every session, used or not: the
 *                            last one closing logs the real token out.
 *   JWKE_FAULT_CORRUPT_SIGNATURE  1 = every C_Sign that succeeds with an
 *                            output buffer returns its signature with the last
 *                            byte flipped (an RSA-CRT fault in miniature);
 *                            counted in injected.C_Sign and (per count
 *                            window) corrupted_signatures.
 *
 * CONTROL FILE (JWKE_FAULT_CONTROL=path)
 *
 *   Lines "key=value", "#" comment lines and blank lines. Keys: faults,
 *   latency, removed, seed, max_sessions, token_flags, lengths,
 *   token_max_sessions, session_idle_ms, corrupt_signature (same syntax
 *   as the environment variables). A key present in the file replaces the environment's value;
 *   absent keys keep it ("faults=" clears the environment's rules). faults,
 *   latency and lengths may repeat (their lines add up). The file is checked when calls
 *   come in (see JWKE_FAULT_CONTROL_INTERVAL_MS) and re-read whenever its
 *   mtime, size or inode changes, or it appears or disappears (then only the
 *   environment applies). A reload writes the stats file (reason "reload",
 *   counts of the window that ends), then restarts the per-function counts,
 *   the bursts and the random sequence, and applies removal/insertion. A file
 *   that does not parse is reported on stderr and ignored (the previous
 *   settings stay; control_errors counts it). Write it atomically (write a
 *   temporary file, rename it over the old one) so a reader never sees half.
 *   A bad file at C_Initialize makes C_Initialize fail, like a bad variable.
 *
 * STATS
 *
 *   Counters per process: sessions (alive now), sessions_peak (the most
 *   alive at once since the module was loaded or the process forked; a
 *   child starts from what it inherited), calls.F (every call of F since the module was
 *   loaded or the process forked), window.F (the count the @N triggers use),
 *   injected.F (faults returned), errors.F (calls that returned anything but
 *   CKR_OK, injected or real). They are written, as "name value" lines, to
 *   JWKE_FAULT_STATS on C_Finalize, on each control-file reload, when the
 *   module is unloaded while initialized, and after every call with
 *   JWKE_FAULT_STATS_SYNC=1; the file is replaced atomically. In the same
 *   process, the exported function
 *
 *       int jwke_faultmod_stats(char *buf, size_t len);
 *
 *   (dlsym it from the module handle) formats the same text into buf and
 *   returns its length as snprintf does (call with NULL, 0 to size it).
 *
 * THREADS AND FORK
 *
 *   One pthread mutex guards the module's own state; it is never held while
 *   the real module works, except for the session closes of a removal. The
 *   init arguments (CKF_OS_LOCKING_OK or mutex callbacks) are passed to the
 *   real module unchanged; the wrapper itself always uses pthreads. A
 *   pthread_atfork handler keeps the mutex usable in a child; the child
 *   keeps the settings and the session map, and starts its counts and random
 *   sequence afresh. C_Initialize in the child is forwarded and its result
 *   returned (SoftHSM, without library.reset_on_fork, answers
 *   CKR_CRYPTOKI_ALREADY_INITIALIZED and the child goes on with the inherited
 *   state).
 *
 *   C_Finalize is forwarded only if this module's C_Initialize initialized
 *   the real module (it answered CKR_OK). When it answered
 *   CKR_CRYPTOKI_ALREADY_INITIALIZED (inherited across fork, or the same
 *   library also loaded directly in this process: dlopen shares one
 *   instance), C_Finalize closes the real sessions opened through the
 *   wrapper and leaves the real module initialized for whoever initialized it.
 *
 * NOT SIMULATED: notify callbacks get the real module's session handle (SoftHSM
 * never calls them); C_WaitForSlotEvent does not report simulated removals;
 * the real module loaded directly in the same process shares its state (its
 * sessions, its login, the tokens it saw at its C_Initialize) with this
 * wrapper, as dlopen returns the same instance.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* explicit_bzero */
#endif
#include <p11-kit/pkcs11.h>

#include "ckr_names.h" /* the core's one table of CKR_ names */

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FM_EXPORT __attribute__((visibility("default")))
#define FM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define FM_DEFAULT_SEED 0x6a776b65ULL
#define FM_MAX_LATENCY_US 60000000UL
#define FM_MAX_CONTROL_BYTES (1024 * 1024)

/* Every function of the v2.40 list, in CK_FUNCTION_LIST order, which is the
 * order of the specification's function groups (one group a line). */
#define FM_FUNCTIONS(X)                                                                   \
    /* general purpose */                                                                 \
    X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList)                       \
    /* slot and token management */                                                       \
    X(C_GetSlotList) X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList)             \
    X(C_GetMechanismInfo) X(C_InitToken) X(C_InitPIN) X(C_SetPIN)                         \
    /* session management */                                                              \
    X(C_OpenSession) X(C_CloseSession) X(C_CloseAllSessions) X(C_GetSessionInfo)          \
    X(C_GetOperationState) X(C_SetOperationState) X(C_Login) X(C_Logout)                  \
    /* object management */                                                               \
    X(C_CreateObject) X(C_CopyObject) X(C_DestroyObject) X(C_GetObjectSize)               \
    X(C_GetAttributeValue) X(C_SetAttributeValue) X(C_FindObjectsInit) X(C_FindObjects)   \
    X(C_FindObjectsFinal)                                                                 \
    /* encryption */                                                                      \
    X(C_EncryptInit) X(C_Encrypt) X(C_EncryptUpdate) X(C_EncryptFinal)                    \
    /* decryption */                                                                      \
    X(C_DecryptInit) X(C_Decrypt) X(C_DecryptUpdate) X(C_DecryptFinal)                    \
    /* message digesting */                                                               \
    X(C_DigestInit) X(C_Digest) X(C_DigestUpdate) X(C_DigestKey) X(C_DigestFinal)         \
    /* signing and MACing */                                                              \
    X(C_SignInit) X(C_Sign) X(C_SignUpdate) X(C_SignFinal) X(C_SignRecoverInit)           \
    X(C_SignRecover)                                                                      \
    /* verifying signatures and MACs */                                                   \
    X(C_VerifyInit) X(C_Verify) X(C_VerifyUpdate) X(C_VerifyFinal) X(C_VerifyRecoverInit) \
    X(C_VerifyRecover)                                                                    \
    /* dual-function cryptographic operations */                                          \
    X(C_DigestEncryptUpdate) X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate)              \
    X(C_DecryptVerifyUpdate)                                                              \
    /* key management */                                                                  \
    X(C_GenerateKey) X(C_GenerateKeyPair) X(C_WrapKey) X(C_UnwrapKey) X(C_DeriveKey)      \
    /* random number generation */                                                        \
    X(C_SeedRandom) X(C_GenerateRandom)                                                   \
    /* parallel function management (legacy) */                                          \
    X(C_GetFunctionStatus) X(C_CancelFunction)                                            \
    /* slot events, added last in v2.01 */                                                \
    X(C_WaitForSlotEvent)

enum {
#define FM_ENUM(name) FN_##name,
    FM_FUNCTIONS(FM_ENUM)
#undef FM_ENUM
    FN_COUNT
};

static const char *const fn_names[FN_COUNT] = {
#define FM_NAME(name) #name,
    FM_FUNCTIONS(FM_NAME)
#undef FM_NAME
};

/* ------------------------------------------------------------------------ */
/* Settings                                                                  */

enum { TRIG_ALWAYS, TRIG_AT, TRIG_FROM, TRIG_PERCENT, TRIG_EVERY };

typedef struct {
    int fn;
    CK_RV rv;
    int trigger;
    unsigned long n;       /* @N, @N+; /N: the period */
    unsigned long offset;  /* /N+K: the first call that fails (default N) */
    double percent;        /* %P */
    unsigned long burst;   /* *K, >= 1 */
    int transient;         /* ~ */
    unsigned long burst_left;
} fm_rule;

/* A misreported length (JWKE_FAULT_LENGTHS): what the function says it
 * wrote, after the real module did the work. */
enum { LEN_REAL, LEN_EXACT, LEN_OVER_REAL, LEN_OVER_BUFFER };

typedef struct {
    int fn;                      /* C_GetAttributeValue, C_Sign, C_FindObjects, C_GetSlotList */
    CK_ATTRIBUTE_TYPE attribute; /* C_GetAttributeValue only */
    int kind;
    CK_ULONG n;                  /* LEN_EXACT: the length; LEN_OVER_*: how much more */
    int has_code;
    CK_RV code;                  /* replaces the real return code (CKR_OK allowed) */
} fm_length;

#define FM_MAX_LENGTHS_PER_CALL 16

typedef struct {
    fm_rule *rules;
    size_t nrules;
    fm_length *lengths;
    size_t nlengths;
    unsigned long latency_us[FN_COUNT];
    int removed;
    uint64_t seed;
    unsigned long max_sessions;
    CK_FLAGS token_flags;  /* ORed into C_GetTokenInfo's flags */
    unsigned long token_max_sessions; /* reported by C_GetTokenInfo (0: the real value) */
    unsigned long session_idle_ms;    /* idle sessions expire after it (0: never) */
    int corrupt_signature;            /* flip a byte of every C_Sign output */
} fm_config;

typedef struct {
    int exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} fm_fileid;

typedef struct fm_session {
    CK_SESSION_HANDLE handle; /* what the caller sees */
    CK_SESSION_HANDLE real;   /* what the real module gave */
    CK_SLOT_ID slot;
    struct timespec last_used; /* for JWKE_FAULT_SESSION_IDLE_MS */
    struct fm_session *next;
} fm_session;

#define FM_BUCKETS 256

static struct {
    pthread_mutex_t lock;
    int initialized;
    int real_owned; /* our C_Initialize initialized the real module (CKR_OK) */
    void *real_library;
    CK_FUNCTION_LIST_PTR real;

    fm_config cfg;
    uint64_t rng;

    /* process settings, read at C_Initialize */
    char *module_path;
    char *control_path;
    long control_interval_ms;
    struct timespec control_checked;
    fm_fileid control_id;
    char *stats_path;
    int stats_sync;
    int verbose;
    int fork_strict;         /* JWKE_FAULT_FORK_STRICT: a child must C_Initialize */
    int child_uninitialized; /* a strict child that has not called C_Initialize yet */

    /* counters */
    unsigned long calls[FN_COUNT];
    unsigned long window[FN_COUNT];
    int window_initialized; /* a C_Initialize succeeded in this count window */
    unsigned long injected[FN_COUNT];
    unsigned long errors[FN_COUNT];
    unsigned long reloads, control_errors, removals, insertions;
    unsigned long expired_sessions, corrupted_signatures; /* in the count window */

    /* sessions opened through the wrapper */
    fm_session *sessions[FM_BUCKETS];
    unsigned long nsessions;
    unsigned long sessions_peak; /* most alive at once since loaded or forked */
    CK_SESSION_HANDLE next_handle;
} st = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .next_handle = 1,
};

static void lock(void) { pthread_mutex_lock(&st.lock); }
static void unlock(void) { pthread_mutex_unlock(&st.lock); }

static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vlog(const char *fmt, ...)
{
    if (!st.verbose)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "jwke_faultmod[%ld]: %s\n", (long)getpid(), line);
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void rules_free(fm_config *c)
{
    free(c->rules);
    c->rules = NULL;
    c->nrules = 0;
}

static void lengths_free(fm_config *c)
{
    free(c->lengths);
    c->lengths = NULL;
    c->nlengths = 0;
}

static void config_free(fm_config *c)
{
    rules_free(c);
    lengths_free(c);
}

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && isspace((unsigned char)*p))
        p++;
    return p;
}

static const char *trim_end(const char *start, const char *end)
{
    while (end > start && isspace((unsigned char)end[-1]))
        end--;
    return end;
}

static int lookup_fn(const char *s, size_t n)
{
    for (int i = 0; i < FN_COUNT; i++)
        if (strlen(fn_names[i]) == n && memcmp(fn_names[i], s, n) == 0)
            return i;
    return -1;
}

/* A decimal number (digits only) in [p, end); advances *pp. */
static int parse_ulong(const char **pp, const char *end, unsigned long *out)
{
    const char *p = *pp;
    unsigned long v = 0;
    if (p >= end || !isdigit((unsigned char)*p))
        return -1;
    while (p < end && isdigit((unsigned char)*p)) {
        unsigned long d = (unsigned long)(*p - '0');
        if (v > (~0UL - d) / 10)
            return -1;
        v = v * 10 + d;
        p++;
    }
    *pp = p;
    *out = v;
    return 0;
}

static int parse_code(const char **pp, const char *end, CK_RV *rv)
{
    const char *p = *pp;
    if (end - p > 4 && memcmp(p, "CKR_", 4) == 0) {
        const char *q = p;
        while (q < end && (isalnum((unsigned char)*q) || *q == '_'))
            q++;
        if (jwke_ckr_value(p, (size_t)(q - p), rv) != 0)
            return -1;
        *pp = q;
        return 0;
    }
    if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        const char *q = p + 2;
        unsigned long v = 0;
        if (q >= end || !isxdigit((unsigned char)*q))
            return -1;
        while (q < end && isxdigit((unsigned char)*q)) {
            if (v >> (sizeof v * 8 - 4))
                return -1;
            v = v * 16 + (unsigned long)(isdigit((unsigned char)*q) ? *q - '0'
                                                                    : tolower((unsigned char)*q) - 'a' + 10);
            q++;
        }
        *rv = v;
        *pp = q;
        return 0;
    }
    unsigned long v;
    if (parse_ulong(pp, end, &v) != 0)
        return -1;
    *rv = v;
    return 0;
}

static int parse_percent(const char **pp, const char *end, double *out)
{
    const char *p = *pp;
    double v = 0;
    int digits = 0;
    while (p < end && isdigit((unsigned char)*p)) {
        v = v * 10 + (*p - '0');
        p++;
        digits++;
    }
    if (p < end && *p == '.') {
        double scale = 0.1;
        p++;
        while (p < end && isdigit((unsigned char)*p)) {
            v += (*p - '0') * scale;
            scale /= 10;
            p++;
            digits++;
        }
    }
    if (!digits || v > 100.0)
        return -1;
    *pp = p;
    *out = v;
    return 0;
}

/* A rule's marker and the whole number >= 1 after it ("@3", "/5", "+2",
 * "*4"): 0 when *q is not at `marker` (nothing read), 1 when the number is
 * in *out and *q past it, -1 when it is missing or 0 (err says what the
 * marker `needs`, in the rule [rule, rule + len)). */
static int marked_count(const char **q, const char *end, char marker, unsigned long *out,
                        const char *needs, char *err, size_t errlen, const char *where, int len,
                        const char *rule)
{
    if (*q >= end || **q != marker)
        return 0;
    (*q)++;
    if (parse_ulong(q, end, out) == 0 && *out > 0)
        return 1;
    set_err(err, errlen, "%s: '%.*s': %s >= 1", where, len, rule, needs);
    return -1;
}

/* One rule "FUNCTION:CODE[trigger][*K][~]" in [p, end). */
static int parse_rule(const char *p, const char *end, fm_rule *r, char *err, size_t errlen,
                      const char *where)
{
    int len = (int)(end - p);
    const char *colon = memchr(p, ':', (size_t)(end - p));
    memset(r, 0, sizeof *r);
    r->burst = 1;
    if (!colon) {
        set_err(err, errlen, "%s: '%.*s': expected FUNCTION:CODE", where, len, p);
        return -1;
    }
    const char *name_end = trim_end(p, colon);
    r->fn = lookup_fn(p, (size_t)(name_end - p));
    if (r->fn < 0) {
        set_err(err, errlen, "%s: '%.*s': unknown PKCS#11 function '%.*s'", where, len, p,
                (int)(name_end - p), p);
        return -1;
    }
    if (r->fn == FN_C_GetFunctionList) {
        set_err(err, errlen, "%s: '%.*s': C_GetFunctionList cannot be made to fail", where, len, p);
        return -1;
    }
    const char *q = skip_space(colon + 1, end);
    if (parse_code(&q, end, &r->rv) != 0) {
        set_err(err, errlen, "%s: '%.*s': expected a CKR_ name from p11-kit/pkcs11.h, a decimal "
                "or a 0x hex code after ':'", where, len, p);
        return -1;
    }
    if (r->rv == CKR_OK) {
        set_err(err, errlen, "%s: '%.*s': CKR_OK is not a fault", where, len, p);
        return -1;
    }
    q = skip_space(q, end);
    int at = marked_count(&q, end, '@', &r->n, "'@' needs a call number", err, errlen, where,
                          len, p);
    int every = at ? 0 : marked_count(&q, end, '/', &r->n, "'/' needs a period", err, errlen, where,
                                      len, p);
    if (at < 0 || every < 0)
        return -1;
    if (at) {
        r->trigger = TRIG_AT;
        if (q < end && *q == '+') {
            r->trigger = TRIG_FROM;
            q++;
        }
    } else if (every) {
        /* /N or /N+K: calls K, K+N, K+2N, ... fail. Evenly spaced faults
         * let a soak promise that no retry ever meets a second fault. */
        r->offset = r->n;
        if (marked_count(&q, end, '+', &r->offset, "'/N+' needs a first call", err, errlen, where,
                         len, p) < 0)
            return -1;
        r->trigger = TRIG_EVERY;
    } else if (q < end && *q == '%') {
        q++;
        if (parse_percent(&q, end, &r->percent) != 0) {
            set_err(err, errlen, "%s: '%.*s': '%%' needs a percentage from 0 to 100", where, len, p);
            return -1;
        }
        r->trigger = TRIG_PERCENT;
    } else {
        r->trigger = TRIG_ALWAYS;
    }
    q = skip_space(q, end);
    if (marked_count(&q, end, '*', &r->burst, "'*' needs a count", err, errlen, where, len, p) < 0)
        return -1;
    q = skip_space(q, end);
    if (q < end && *q == '~') {
        r->transient = 1;
        q++;
    }
    q = skip_space(q, end);
    if (q != end) {
        set_err(err, errlen, "%s: '%.*s': unexpected '%.*s'", where, len, p, (int)(end - q), q);
        return -1;
    }
    return 0;
}

/* Adds one item (a..b, trimmed, not empty) of a setting's list to cfg. */
typedef int (*fm_add_item)(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                           const char *where);

/* Calls add for each item of a ';'/newline separated list. */
static int parse_list(const char *spec, size_t speclen, fm_add_item add, fm_config *cfg, char *err,
                      size_t errlen, const char *where)
{
    const char *p = spec, *end = spec + speclen;
    while (p < end) {
        const char *item_end = p;
        while (item_end < end && *item_end != ';' && *item_end != '\n')
            item_end++;
        const char *a = skip_space(p, item_end), *b = trim_end(a, item_end);
        if (a < b && add(a, b, cfg, err, errlen, where) != 0)
            return -1;
        p = item_end < end ? item_end + 1 : end;
    }
    return 0;
}

/* `items` (an array of *count items of `size` bytes) grown by one, a copy
 * of `item`; NULL (and `items` unchanged) when out of memory. */
static void *append_item(void *items, size_t *count, const void *item, size_t size, char *err,
                         size_t errlen, const char *where)
{
    unsigned char *grown = realloc(items, (*count + 1) * size);
    if (!grown) {
        set_err(err, errlen, "%s: out of memory", where);
        return NULL;
    }
    memcpy(grown + *count * size, item, size);
    (*count)++;
    return grown;
}

/* add_KIND, the fm_add_item of a list of `type` items: parse_KIND one item
 * and append it to cfg->ARRAY (cfg->nARRAY items). */
#define FM_ADD_PARSED(kind, type, array)                                           \
    static int add_##kind(const char *a, const char *b, fm_config *cfg, char *err,   \
                          size_t errlen, const char *where)                        \
    {                                                                              \
        type item;                                                                 \
        if (parse_##kind(a, b, &item, err, errlen, where) != 0)                    \
            return -1;                                                             \
        void *grown = append_item(cfg->array, &cfg->n##array, &item, sizeof item,  \
                                  err, errlen, where);                             \
        if (grown)                                                                 \
            cfg->array = grown;                                                    \
        return grown ? 0 : -1;                                                     \
    }

FM_ADD_PARSED(rule, fm_rule, rules)

/* One latency item "C_Sign:2000" or "*:10" into cfg->latency_us (later
 * items win). */
static int add_latency(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                       const char *where)
{
    int len = (int)(b - a);
    const char *colon = memchr(a, ':', (size_t)(b - a));
    if (!colon) {
        set_err(err, errlen, "%s: '%.*s': expected FUNCTION:MICROSECONDS", where, len, a);
        return -1;
    }
    const char *name_end = trim_end(a, colon);
    int all = (name_end - a == 1 && *a == '*');
    int fn = all ? -1 : lookup_fn(a, (size_t)(name_end - a));
    if (!all && fn < 0) {
        set_err(err, errlen, "%s: '%.*s': unknown PKCS#11 function '%.*s'", where, len, a,
                (int)(name_end - a), a);
        return -1;
    }
    const char *q = skip_space(colon + 1, b);
    unsigned long us;
    if (parse_ulong(&q, b, &us) != 0 || skip_space(q, b) != b || us > FM_MAX_LATENCY_US) {
        set_err(err, errlen, "%s: '%.*s': latency must be a number of microseconds up to %lu",
                where, len, a, FM_MAX_LATENCY_US);
        return -1;
    }
    for (int i = 0; i < FN_COUNT; i++)
        if (all || i == fn)
            cfg->latency_us[i] = us;
    return 0;
}

static int parse_bool(const char *s, size_t n, int *out)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off", "" };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0)
            return *out = 1, 0;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0)
            return *out = 0, 0;
    return -1;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    const char *p = s, *end = s + n;
    uint64_t v = 0;
    int base = 10;
    if (n > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    if (p >= end)
        return -1;
    for (; p < end; p++) {
        int d;
        if (isdigit((unsigned char)*p))
            d = *p - '0';
        else if (base == 16 && isxdigit((unsigned char)*p))
            d = tolower((unsigned char)*p) - 'a' + 10;
        else
            return -1;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    *out = v;
    return 0;
}

/* Attribute names a length rule may use (others as 0x hex or decimal). */
static const struct {
    const char *name;
    CK_ATTRIBUTE_TYPE type;
} attribute_table[] = {
    {"CKA_CLASS", CKA_CLASS}, {"CKA_TOKEN", CKA_TOKEN}, {"CKA_PRIVATE", CKA_PRIVATE},
    {"CKA_LABEL", CKA_LABEL}, {"CKA_VALUE", CKA_VALUE}, {"CKA_KEY_TYPE", CKA_KEY_TYPE},
    {"CKA_ID", CKA_ID}, {"CKA_SENSITIVE", CKA_SENSITIVE}, {"CKA_ENCRYPT", CKA_ENCRYPT},
    {"CKA_DECRYPT", CKA_DECRYPT}, {"CKA_SIGN", CKA_SIGN}, {"CKA_VERIFY", CKA_VERIFY},
    {"CKA_MODULUS", CKA_MODULUS}, {"CKA_MODULUS_BITS", CKA_MODULUS_BITS},
    {"CKA_PUBLIC_EXPONENT", CKA_PUBLIC_EXPONENT}, {"CKA_EC_PARAMS", CKA_EC_PARAMS},
    {"CKA_EC_POINT", CKA_EC_POINT},
};

/* "CKA_NAME", "0xHEX" or decimal: the whole of [p, end). */
static int parse_attribute(const char *p, const char *end, CK_ATTRIBUTE_TYPE *out)
{
    for (size_t i = 0; i < sizeof attribute_table / sizeof attribute_table[0]; i++)
        if (strlen(attribute_table[i].name) == (size_t)(end - p) &&
            memcmp(attribute_table[i].name, p, (size_t)(end - p)) == 0)
            return *out = attribute_table[i].type, 0;
    uint64_t v;
    if (parse_u64(p, (size_t)(end - p), &v) != 0)
        return -1;
    *out = (CK_ATTRIBUTE_TYPE)v;
    return 0;
}

/* One item "TARGET=LEN[,CODE]" in [p, end). */
static int parse_length(const char *p, const char *end, fm_length *l, char *err, size_t errlen,
                        const char *where)
{
    int len = (int)(end - p);
    memset(l, 0, sizeof *l);
    const char *eq = memchr(p, '=', (size_t)(end - p));
    if (!eq) {
        set_err(err, errlen, "%s: '%.*s': expected FUNCTION[:ATTRIBUTE]=LENGTH[,CODE]", where,
                len, p);
        return -1;
    }
    const char *target_end = trim_end(p, eq);
    const char *colon = memchr(p, ':', (size_t)(target_end - p));
    const char *name_end = colon ? trim_end(p, colon) : target_end;
    l->fn = lookup_fn(p, (size_t)(name_end - p));
    if (l->fn != FN_C_GetAttributeValue && l->fn != FN_C_Sign && l->fn != FN_C_FindObjects &&
        l->fn != FN_C_GetSlotList) {
        set_err(err, errlen, "%s: '%.*s': lengths are misreported for C_GetAttributeValue:ATTRIBUTE, "
                "C_Sign, C_FindObjects and C_GetSlotList only", where, len, p);
        return -1;
    }
    if ((l->fn == FN_C_GetAttributeValue) != (colon != NULL) ||
        (colon && parse_attribute(skip_space(colon + 1, target_end), target_end, &l->attribute) != 0)) {
        set_err(err, errlen, "%s: '%.*s': C_GetAttributeValue takes one attribute (CKA_ name or "
                "number) after ':', the others none", where, len, p);
        return -1;
    }
    const char *q = skip_space(eq + 1, end);
    const char *comma = q < end ? memchr(q, ',', (size_t)(end - q)) : NULL;
    const char *value_end = trim_end(q, comma ? comma : end);
    unsigned long n = 0;
    uint64_t exact = 0;
    int ok;
    if (value_end - q == 4 && memcmp(q, "real", 4) == 0) {
        l->kind = LEN_REAL;
        ok = l->fn == FN_C_GetAttributeValue;
    } else if (value_end - q > 7 && memcmp(q, "buffer+", 7) == 0) {
        const char *r = q + 7;
        l->kind = LEN_OVER_BUFFER;
        ok = parse_ulong(&r, value_end, &n) == 0 && r == value_end;
    } else if (q < value_end && (*q == '+' || *q == '-')) {
        const char *r = q + 1;
        l->kind = *q == '+' ? LEN_OVER_REAL : LEN_EXACT;
        ok = parse_ulong(&r, value_end, &n) == 0 && r == value_end && (*q == '+' || n > 0);
        if (*q == '-')
            n = (unsigned long)((CK_ULONG)0 - (CK_ULONG)n); /* (CK_ULONG)-N */
    } else {
        l->kind = LEN_EXACT;
        ok = parse_u64(q, (size_t)(value_end - q), &exact) == 0 && exact <= (CK_ULONG)-1;
        n = (unsigned long)exact;
    }
    if (!ok) {
        set_err(err, errlen, "%s: '%.*s': LENGTH is N, -N, +N, buffer+N or (attributes only) "
                "real", where, len, p);
        return -1;
    }
    l->n = (CK_ULONG)n;
    if (comma) {
        const char *c = skip_space(comma + 1, end);
        if (parse_code(&c, end, &l->code) != 0 || skip_space(c, end) != end) {
            set_err(err, errlen, "%s: '%.*s': expected a CKR_ name or number after ','", where,
                    len, p);
            return -1;
        }
        l->has_code = 1;
    }
    return 0;
}

FM_ADD_PARSED(length, fm_length, lengths)

enum { KEY_FAULTS, KEY_LATENCY, KEY_REMOVED, KEY_SEED, KEY_MAX_SESSIONS, KEY_TOKEN_FLAGS,
       KEY_LENGTHS, KEY_TOKEN_MAX_SESSIONS, KEY_SESSION_IDLE_MS, KEY_CORRUPT_SIGNATURE,
       KEY_COUNT };

/* Token flags a test may add to what the real token reports. */
static const struct {
    const char *name;
    CK_FLAGS flag;
} token_flag_names[] = {
    {"CKF_USER_PIN_COUNT_LOW", CKF_USER_PIN_COUNT_LOW},
    {"CKF_USER_PIN_FINAL_TRY", CKF_USER_PIN_FINAL_TRY},
    {"CKF_USER_PIN_LOCKED", CKF_USER_PIN_LOCKED},
    {"CKF_USER_PIN_TO_BE_CHANGED", CKF_USER_PIN_TO_BE_CHANGED},
};

/* "CKF_A,CKF_B" (or empty) -> flags; -1 on an unknown name. */
static int parse_token_flags(const char *v, size_t n, CK_FLAGS *out)
{
    *out = 0;
    const char *p = v, *end = v + n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        while (p < item_end && (*p == ' ' || *p == '\t'))
            p++;
        const char *e = item_end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > p) {
            size_t i, len = (size_t)(e - p);
            for (i = 0; i < sizeof token_flag_names / sizeof token_flag_names[0]; i++)
                if (strlen(token_flag_names[i].name) == len &&
                    memcmp(token_flag_names[i].name, p, len) == 0)
                    break;
            if (i == sizeof token_flag_names / sizeof token_flag_names[0])
                return -1;
            *out |= token_flag_names[i].flag;
        }
        p = comma ? comma + 1 : end;
    }
    return 0;
}

/* A count up to max; empty means 0 (off). */
static int parse_count(const char *v, size_t n, uint64_t max, const char *what,
                       unsigned long *out, char *err, size_t errlen, const char *where)
{
    uint64_t u = 0;
    if (n > 0 && (parse_u64(v, n, &u) != 0 || u > max)) {
        set_err(err, errlen, "%s: expected %s, got '%.*s'", where, what, (int)n, v);
        return -1;
    }
    *out = (unsigned long)u;
    return 0;
}

/* A 0/1 setting (parse_bool's spellings). */
static int parse_switch(const char *v, size_t n, int *out, char *err, size_t errlen,
                        const char *where)
{
    if (parse_bool(v, n, out) == 0)
        return 0;
    set_err(err, errlen, "%s: expected 0 or 1, got '%.*s'", where, (int)n, v);
    return -1;
}

/* One setting (from the environment or the control file) into cfg. */
static int apply_setting(fm_config *cfg, int key, const char *v, size_t n, char *err,
                         size_t errlen, const char *where)
{
    switch (key) {
    case KEY_FAULTS:
        return parse_list(v, n, add_rule, cfg, err, errlen, where);
    case KEY_LATENCY:
        return parse_list(v, n, add_latency, cfg, err, errlen, where);
    case KEY_REMOVED:
        return parse_switch(v, n, &cfg->removed, err, errlen, where);
    case KEY_SEED:
        if (parse_u64(v, n, &cfg->seed) != 0) {
            set_err(err, errlen, "%s: expected a decimal or 0x hex number, got '%.*s'", where,
                    (int)n, v);
            return -1;
        }
        return 0;
    case KEY_MAX_SESSIONS:
        return parse_count(v, n, 1000000, "a session count", &cfg->max_sessions, err, errlen,
                           where);
    case KEY_TOKEN_MAX_SESSIONS:
        return parse_count(v, n, 1000000, "a session count", &cfg->token_max_sessions, err,
                           errlen, where);
    case KEY_SESSION_IDLE_MS:
        return parse_count(v, n, 86400000, "milliseconds", &cfg->session_idle_ms, err, errlen,
                           where);
    case KEY_CORRUPT_SIGNATURE:
        return parse_switch(v, n, &cfg->corrupt_signature, err, errlen, where);
    case KEY_LENGTHS:
        return parse_list(v, n, add_length, cfg, err, errlen, where);
    case KEY_TOKEN_FLAGS:
        if (parse_token_flags(v, n, &cfg->token_flags) != 0) {
            set_err(err, errlen, "%s: expected CKF_USER_PIN_* names separated by commas, got '%.*s'",
                    where, (int)n, v);
            return -1;
        }
        return 0;
    }
    return -1;
}

static const char *const env_names[KEY_COUNT] = {
    "JWKE_FAULTS", "JWKE_FAULT_LATENCY_US", "JWKE_FAULT_REMOVED", "JWKE_FAULT_SEED",
    "JWKE_FAULT_MAX_SESSIONS", "JWKE_FAULT_TOKEN_FLAGS", "JWKE_FAULT_LENGTHS",
    "JWKE_FAULT_TOKEN_MAX_SESSIONS", "JWKE_FAULT_SESSION_IDLE_MS", "JWKE_FAULT_CORRUPT_SIGNATURE",
};
static const char *const control_keys[KEY_COUNT] = {
    "faults", "latency", "removed", "seed", "max_sessions", "token_flags", "lengths",
    "token_max_sessions", "session_idle_ms", "corrupt_signature",
};

static void reset_key(fm_config *cfg, int key)
{
    switch (key) {
    case KEY_FAULTS: rules_free(cfg); break;
    case KEY_LENGTHS: lengths_free(cfg); break;
    case KEY_LATENCY: memset(cfg->latency_us, 0, sizeof cfg->latency_us); break;
    case KEY_REMOVED: cfg->removed = 0; break;
    case KEY_SEED: cfg->seed = FM_DEFAULT_SEED; break;
    case KEY_MAX_SESSIONS: cfg->max_sessions = 0; break;
    case KEY_TOKEN_FLAGS: cfg->token_flags = 0; break;
    case KEY_TOKEN_MAX_SESSIONS: cfg->token_max_sessions = 0; break;
    case KEY_SESSION_IDLE_MS: cfg->session_idle_ms = 0; break;
    case KEY_CORRUPT_SIGNATURE: cfg->corrupt_signature = 0; break;
    }
}

static void fileid_from_stat(fm_fileid *id, const struct stat *sb)
{
    memset(id, 0, sizeof *id);
    id->exists = 1;
    id->dev = sb->st_dev;
    id->ino = sb->st_ino;
    id->size = sb->st_size;
    id->mtime = sb->st_mtim;
}

static void stat_fileid(const char *path, fm_fileid *id)
{
    struct stat sb;
    if (stat(path, &sb) == 0)
        fileid_from_stat(id, &sb);
    else
        memset(id, 0, sizeof *id);
}

static int fileid_equal(const fm_fileid *a, const fm_fileid *b)
{
    if (a->exists != b->exists)
        return 0;
    if (!a->exists)
        return 1;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Applies the control file over cfg; *id is what was read. */
static int read_control(const char *path, fm_config *cfg, fm_fileid *id, char *err, size_t errlen)
{
    memset(id, 0, sizeof *id);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        set_err(err, errlen, "control file %s: %s", path, strerror(errno));
        stat_fileid(path, id);
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > FM_MAX_CONTROL_BYTES) {
        set_err(err, errlen, "control file %s: not a regular file of at most %d bytes", path,
                FM_MAX_CONTROL_BYTES);
        stat_fileid(path, id);
        close(fd);
        return -1;
    }
    fileid_from_stat(id, &sb);
    char *text = malloc((size_t)sb.st_size + 1);
    size_t have = 0;
    if (!text) {
        close(fd);
        set_err(err, errlen, "control file %s: out of memory", path);
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, text + have, (size_t)sb.st_size - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        if (have == (size_t)sb.st_size)
            break;
    }
    close(fd);
    text[have] = '\0';

    int seen[KEY_COUNT] = { 0 };
    int rc = 0, lineno = 0;
    const char *p = text, *end = text + have;
    while (p < end && rc == 0) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        lineno++;
        const char *a = skip_space(p, eol), *b = trim_end(a, eol);
        if (a < b && *a != '#') {
            char where[64];
            const char *eq = memchr(a, '=', (size_t)(b - a));
            const char *key_end = eq ? trim_end(a, eq) : b;
            int key = -1;
            for (int k = 0; k < KEY_COUNT; k++)
                if (strlen(control_keys[k]) == (size_t)(key_end - a) &&
                    memcmp(control_keys[k], a, (size_t)(key_end - a)) == 0)
                    key = k;
            snprintf(where, sizeof where, "control file line %d", lineno);
            if (!eq) {
                set_err(err, errlen, "%s %s: expected key=value", path, where);
                rc = -1;
            } else if (key < 0) {
                char known[256] = "";
                for (int k = 0; k < KEY_COUNT; k++)
                    snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                             k ? ", " : "", control_keys[k]);
                set_err(err, errlen, "%s %s: unknown key '%.*s' (%s)", path, where,
                        (int)(key_end - a), a, known);
                rc = -1;
            } else {
                const char *v = skip_space(eq + 1, b);
                if (!seen[key]) {
                    reset_key(cfg, key); /* the file replaces the environment */
                    seen[key] = 1;
                } else if (key != KEY_FAULTS && key != KEY_LATENCY && key != KEY_LENGTHS) {
                    reset_key(cfg, key);
                }
                char full[128];
                snprintf(full, sizeof full, "%s %s", path, where);
                rc = apply_setting(cfg, key, v, (size_t)(b - v), err, errlen, full);
            }
        }
        p = eol < end ? eol + 1 : end;
    }
    free(text);
    return rc;
}

/* The settings: environment, then the control file over it. */
static int build_config(fm_config *cfg, fm_fileid *id, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->seed = FM_DEFAULT_SEED;
    memset(id, 0, sizeof *id);
    for (int k = 0; k < KEY_COUNT; k++) {
        const char *v = getenv(env_names[k]);
        if (v && apply_setting(cfg, k, v, strlen(v), err, errlen, env_names[k]) != 0) {
            config_free(cfg);
            return -1;
        }
    }
    if (st.control_path && read_control(st.control_path, cfg, id, err, errlen) != 0) {
        config_free(cfg);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sessions (callers hold the lock)                                          */

static fm_session **session_slot(CK_SESSION_HANDLE h)
{
    fm_session **pp = &st.sessions[h % FM_BUCKETS];
    while (*pp && (*pp)->handle != h)
        pp = &(*pp)->next;
    return pp;
}

static void session_forget(CK_SESSION_HANDLE h)
{
    fm_session **pp = session_slot(h);
    if (*pp) {
        fm_session *s = *pp;
        *pp = s->next;
        free(s);
        st.nsessions--;
    }
}

/* Drops every session (of one slot, or all); closes them in the real module
 * when close_real is set. */
static void sessions_drop(int all_slots, CK_SLOT_ID slot, int close_real)
{
    for (int b = 0; b < FM_BUCKETS; b++) {
        fm_session **pp = &st.sessions[b];
        while (*pp) {
            fm_session *s = *pp;
            if (all_slots || s->slot == slot) {
                if (close_real && st.real)
                    st.real->C_CloseSession(s->real);
                *pp = s->next;
                free(s);
                st.nsessions--;
            } else {
                pp = &s->next;
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Real-HSM behaviours: session limits, idle expiry, corrupt signatures      */

static long long monotonic_ms(const struct timespec *t)
{
    return (long long)t->tv_sec * 1000 + t->tv_nsec / 1000000;
}

/* A session is used: its idle time starts over. Caller holds the lock. */
static void session_used_locked(fm_session *s)
{
    clock_gettime(CLOCK_MONOTONIC, &s->last_used);
}

/* The token's own clock: on every call, each session idle past the limit
 * is closed in the real module, used or not, as a device closes them when
 * their time runs out. So the session a caller only logged in with expires
 * too, and when the last one goes the real token logs out (PKCS#11: the
 * login belongs to the application's sessions). Caller holds the lock. */
static void expire_idle_sessions_locked(void)
{
    if (!st.cfg.session_idle_ms)
        return;
    for (int b = 0; b < FM_BUCKETS; b++) {
        fm_session **pp = &st.sessions[b];
        while (*pp) {
            fm_session *s = *pp;
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (monotonic_ms(&now) - monotonic_ms(&s->last_used) <= (long long)st.cfg.session_idle_ms) {
                pp = &s->next;
                continue;
            }
            st.expired_sessions++;
            vlog("session %lu idle for more than %lu ms: closed by the token",
                 (unsigned long)s->handle, st.cfg.session_idle_ms);
            if (st.real)
                st.real->C_CloseSession(s->real);
            *pp = s->next;
            free(s);
            st.nsessions--;
        }
    }
}

/* What a networked HSM says about its sessions, when a test sets a limit. */
static void report_session_limit_locked(CK_TOKEN_INFO_PTR info)
{
    if (!st.cfg.token_max_sessions)
        return;
    info->ulMaxSessionCount = st.cfg.token_max_sessions;
    info->ulMaxRwSessionCount = st.cfg.token_max_sessions;
    info->ulSessionCount = st.nsessions;
    info->ulRwSessionCount = st.nsessions; /* the engine opens read-write sessions only */
}

/* Flips the last byte of a signature C_Sign wrote (JWKE_FAULT_CORRUPT_SIGNATURE):
 * a token that signs wrongly without saying so. `buffer` is the caller's
 * buffer size, so a misreported length never moves the flip outside it. */
static CK_RV corrupt_signature(CK_RV rv, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len, CK_ULONG buffer)
{
    if (rv != CKR_OK || !sig || !sig_len)
        return rv;
    CK_ULONG written = *sig_len < buffer ? *sig_len : buffer;
    lock();
    int corrupt = st.cfg.corrupt_signature && written > 0;
    if (corrupt) {
        st.corrupted_signatures++;
        st.injected[FN_C_Sign]++;
        vlog("C_Sign: flipping the last byte of a %lu-byte signature", (unsigned long)written);
    }
    unlock();
    if (corrupt)
        sig[written - 1] ^= 0x01;
    return rv;
}

/* ------------------------------------------------------------------------ */
/* Stats                                                                     */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} fm_buf;

static void buf_printf(fm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(fm_buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
}

static void format_stats(fm_buf *b, const char *reason)
{
    unsigned long injected = 0, errors = 0;
    for (int i = 0; i < FN_COUNT; i++) {
        injected += st.injected[i];
        errors += st.errors[i];
    }
    buf_printf(b, "pid %ld\nreason %s\ninitialized %d\nremoved %d\nsessions %lu\n"
               "reloads %lu\ncontrol_errors %lu\nremovals %lu\ninsertions %lu\n"
               "injected_total %lu\nerrors_total %lu\nexpired_sessions %lu\n"
               "corrupted_signatures %lu\nsessions_peak %lu\n",
               (long)getpid(), reason, st.initialized, st.cfg.removed, st.nsessions,
               st.reloads, st.control_errors, st.removals, st.insertions, injected, errors,
               st.expired_sessions, st.corrupted_signatures, st.sessions_peak);
    for (int i = 0; i < FN_COUNT; i++) {
        if (!st.calls[i] && !st.window[i])
            continue;
        buf_printf(b, "calls.%s %lu\nwindow.%s %lu\ninjected.%s %lu\nerrors.%s %lu\n",
                   fn_names[i], st.calls[i], fn_names[i], st.window[i], fn_names[i],
                   st.injected[i], fn_names[i], st.errors[i]);
    }
}

/* JWKE_FAULT_STATS with %p -> pid; NULL when unset. */
static char *stats_file_path(void)
{
    if (!st.stats_path)
        return NULL;
    fm_buf b = { 0 };
    for (const char *p = st.stats_path; *p; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            buf_printf(&b, "%ld", (long)getpid());
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            buf_printf(&b, "%%");
            p++;
        } else {
            buf_printf(&b, "%c", *p);
        }
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static void write_stats_locked(const char *reason)
{
    char *path = stats_file_path();
    if (!path)
        return;
    fm_buf b = { 0 };
    format_stats(&b, reason);
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (b.failed || !tmp) {
        free(path);
        free(tmp);
        free(b.p);
        return;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        size_t off = 0;
        while (off < b.len) {
            ssize_t w = write(fd, b.p + off, b.len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        close(fd);
        if (off == b.len && rename(tmp, path) == 0)
            tmp[0] = '\0';
        else
            unlink(tmp);
    } else {
        fprintf(stderr, "jwke_faultmod: cannot write stats to %s: %s\n", path, strerror(errno));
    }
    free(path);
    free(tmp);
    free(b.p);
}

FM_EXPORT int jwke_faultmod_stats(char *buf, size_t len)
{
    fm_buf b = { 0 };
    lock();
    format_stats(&b, "query");
    unlock();
    if (b.failed) {
        free(b.p);
        return -1;
    }
    if (buf && len) {
        size_t n = b.len < len - 1 ? b.len : len - 1;
        memcpy(buf, b.p, n);
        buf[n] = '\0';
    }
    int n = (int)b.len;
    free(b.p);
    return n;
}

/* ------------------------------------------------------------------------ */
/* State changes (callers hold the lock)                                     */

static void reset_windows(int keep_init_counts)
{
    for (int i = 0; i < FN_COUNT; i++) {
        if (keep_init_counts && (i == FN_C_Initialize || i == FN_C_Finalize))
            continue;
        st.window[i] = 0;
    }
    st.expired_sessions = 0;
    st.corrupted_signatures = 0;
    /* a window that starts while the module is up is already initialized */
    st.window_initialized = st.initialized;
}

/* Replaces the settings (taking ownership of cfg) and simulates a removal or
 * re-insertion when the removed flag changes. */
static void apply_config_locked(fm_config *cfg)
{
    int was_removed = st.cfg.removed;
    config_free(&st.cfg);
    st.cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    st.rng = st.cfg.seed;
    if (!was_removed && st.cfg.removed) {
        /* A pulled token takes its sessions (and its login) with it. */
        sessions_drop(1, 0, st.initialized);
        if (st.initialized) {
            st.removals++;
            vlog("token removed: every slot reports no token");
        }
    } else if (was_removed && !st.cfg.removed && st.initialized) {
        st.insertions++;
        vlog("token re-inserted: old session handles stay invalid");
    }
}

static void maybe_reload_locked(void)
{
    if (!st.control_path)
        return;
    if (st.control_interval_ms > 0) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        /* in nanoseconds: milliseconds per field would round a negative
         * tv_nsec difference up, and look again up to 1 ms early */
        long long elapsed_ns = (long long)(now.tv_sec - st.control_checked.tv_sec) * 1000000000LL +
                               (now.tv_nsec - st.control_checked.tv_nsec);
        if (elapsed_ns < (long long)st.control_interval_ms * 1000000LL)
            return;
        st.control_checked = now;
    }
    fm_fileid id;
    stat_fileid(st.control_path, &id);
    if (fileid_equal(&id, &st.control_id))
        return;
    fm_config cfg;
    char err[512];
    if (build_config(&cfg, &id, err, sizeof err) != 0) {
        st.control_id = id;
        st.control_errors++;
        fprintf(stderr, "jwke_faultmod: %s (the previous fault settings stay)\n", err);
        return;
    }
    st.control_id = id;
    write_stats_locked("reload");
    apply_config_locked(&cfg);
    reset_windows(0);
    st.reloads++;
    vlog("control file %s reloaded: %zu fault rule(s), removed=%d", st.control_path,
         st.cfg.nrules, st.cfg.removed);
}

static uint64_t next_random(void)
{
    uint64_t z = (st.rng += 0x9E3779B97F4A7C15ULL); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------ */
/* One call                                                                  */

typedef struct {
    int fn;
    CK_FUNCTION_LIST_PTR R;
    int removed;
    int sync;
    CK_RV fault;
    int transient;
    unsigned long number; /* this call's number in the window */
    fm_length lengths[FM_MAX_LENGTHS_PER_CALL]; /* this function's, as set at the call */
    size_t nlengths;
} fm_call;

static void decide_fault_locked(fm_call *c)
{
    for (size_t i = 0; i < st.cfg.nrules; i++) {
        fm_rule *r = &st.cfg.rules[i];
        if (r->fn == c->fn && r->burst_left > 0) {
            r->burst_left--;
            c->fault = r->rv;
            c->transient = r->transient;
            return;
        }
    }
    for (size_t i = 0; i < st.cfg.nrules; i++) {
        fm_rule *r = &st.cfg.rules[i];
        if (r->fn != c->fn)
            continue;
        int fire = 0;
        switch (r->trigger) {
        case TRIG_ALWAYS: fire = 1; break;
        case TRIG_AT: fire = c->number == r->n; break;
        case TRIG_FROM: fire = c->number >= r->n; break;
        case TRIG_EVERY: fire = c->number >= r->offset && (c->number - r->offset) % r->n == 0; break;
        case TRIG_PERCENT:
            fire = (double)(next_random() >> 11) * (100.0 / 9007199254740992.0) < r->percent;
            break;
        }
        if (fire) {
            r->burst_left = r->burst - 1;
            c->fault = r->rv;
            c->transient = r->transient;
            return;
        }
    }
}

static void sleep_us(unsigned long us)
{
    struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* Counts the call, looks at the control file, decides the fault, sleeps the
 * latency. CKR_CRYPTOKI_NOT_INITIALIZED when the module is not initialized. */
static CK_RV enter(int fn, fm_call *c)
{
    memset(c, 0, sizeof *c);
    c->fn = fn;
    lock();
    int initialized = st.initialized && !st.child_uninitialized;
    if (initialized) {
        maybe_reload_locked();
        if (!st.cfg.removed)
            expire_idle_sessions_locked();
    }
    st.calls[fn]++;
    c->number = ++st.window[fn];
    c->R = st.real;
    c->removed = st.cfg.removed;
    c->sync = st.stats_sync;
    unsigned long latency = 0;
    if (initialized) {
        decide_fault_locked(c);
        latency = st.cfg.latency_us[fn];
        for (size_t i = 0; i < st.cfg.nlengths && c->nlengths < FM_MAX_LENGTHS_PER_CALL; i++)
            if (st.cfg.lengths[i].fn == fn)
                c->lengths[c->nlengths++] = st.cfg.lengths[i];
    }
    unlock();
    if (latency)
        sleep_us(latency);
    return initialized ? CKR_OK : CKR_CRYPTOKI_NOT_INITIALIZED;
}

static CK_RV finish(fm_call *c, CK_RV rv)
{
    if (rv != CKR_OK || c->sync) {
        lock();
        if (rv != CKR_OK)
            st.errors[c->fn]++;
        if (c->sync && !(c->fn == FN_C_Finalize && rv == CKR_OK)) /* that one wrote already */
            write_stats_locked("call");
        unlock();
    }
    return rv;
}

/* The real handle behind a caller's session handle. */
static CK_RV session_real(CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real)
{
    CK_RV rv;
    lock();
    if (st.cfg.removed) {
        rv = (h >= 1 && h < st.next_handle) ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
    } else {
        /* one idle too long was closed by enter(): the token forgot it */
        fm_session *s = *session_slot(h);
        rv = s ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
        if (s) {
            session_used_locked(s);
            *real = s->real;
        }
    }
    unlock();
    return rv;
}

/* enter(), then the real session behind the caller's: what every call on
 * a session starts with. */
static CK_RV enter_session(int fn, fm_call *c, CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real)
{
    CK_RV rv = enter(fn, c);
    return rv == CKR_OK ? session_real(h, real) : rv;
}

/* Returns the injected code, after its side effects on the session. */
static CK_RV deliver(fm_call *c, int has_session, CK_SESSION_HANDLE h, CK_SESSION_HANDLE real)
{
    if (has_session && !c->transient) {
        if (c->fault == CKR_SESSION_HANDLE_INVALID || c->fault == CKR_SESSION_CLOSED) {
            c->R->C_CloseSession(real);
            lock();
            session_forget(h);
            unlock();
        } else if (c->fault == CKR_USER_NOT_LOGGED_IN && c->fn != FN_C_Login &&
                   c->fn != FN_C_Logout) {
            c->R->C_Logout(real);
        }
    }
    lock();
    st.injected[c->fn]++;
    if (st.verbose) {
        const char *name = jwke_ckr_name(c->fault);
        vlog("%s call %lu: injecting %s (0x%lx)%s", fn_names[c->fn], c->number,
             name ? name : "vendor code", (unsigned long)c->fault, c->transient ? " ~" : "");
    }
    unlock();
    return c->fault;
}

/* A misreported length: counted with the injected faults. */
static void note_misreport(fm_call *c, const char *what, CK_ULONG claimed)
{
    lock();
    st.injected[c->fn]++;
    if (st.verbose)
        vlog("%s call %lu: reporting %lu for %s", fn_names[c->fn], c->number,
             (unsigned long)claimed, what);
    unlock();
}

/* The length a rule claims, from what was really written and the buffer. */
static CK_ULONG claimed_length(const fm_length *l, CK_ULONG written, CK_ULONG buffer)
{
    switch (l->kind) {
    case LEN_EXACT: return l->n;
    case LEN_OVER_REAL: return written + l->n;
    case LEN_OVER_BUFFER: return buffer + l->n;
    default: return written; /* LEN_REAL */
    }
}

/* C_Sign, C_FindObjects, C_GetSlotList after a real success that wrote
 * into the caller's buffer (`buffer` entries): *out_len becomes the rule's
 * claim. Returns the code to give. */
static CK_RV misreport_output(fm_call *c, int wrote, CK_ULONG_PTR out_len, CK_ULONG buffer,
                              CK_RV rv)
{
    if (!c->nlengths || rv != CKR_OK || !wrote || !out_len)
        return rv;
    const fm_length *l = &c->lengths[0];
    *out_len = claimed_length(l, *out_len, buffer);
    note_misreport(c, "the output", *out_len);
    return l->has_code ? l->code : rv;
}

/* C_GetAttributeValue after the real call: each attribute with a rule
 * gets the rule's claim, when the object has that attribute. `given`
 * holds the buffer sizes the caller passed. */
static CK_RV misreport_attributes(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE object,
                                  CK_ATTRIBUTE_PTR t, CK_ULONG count, const CK_ULONG *given,
                                  CK_RV rv)
{
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE &&
        rv != CKR_BUFFER_TOO_SMALL)
        return rv;
    CK_RV result = rv;
    for (CK_ULONG i = 0; i < count; i++) {
        const fm_length *l = NULL;
        for (size_t k = 0; k < c->nlengths && !l; k++)
            if (c->lengths[k].attribute == t[i].type)
                l = &c->lengths[k];
        if (!l)
            continue;
        CK_ULONG value_len = t[i].ulValueLen;
        int too_small = 0;
        if (value_len == CK_UNAVAILABLE_INFORMATION) {
            /* absent, sensitive or too large: only the last has a length */
            CK_ATTRIBUTE q = {t[i].type, NULL, 0};
            if (c->R->C_GetAttributeValue(real, object, &q, 1) != CKR_OK ||
                q.ulValueLen == CK_UNAVAILABLE_INFORMATION)
                continue;
            value_len = q.ulValueLen;
            too_small = t[i].pValue != NULL && value_len > given[i];
        }
        if (l->kind == LEN_REAL && !too_small)
            continue;
        t[i].ulValueLen = claimed_length(l, value_len, given[i]);
        note_misreport(c, "an attribute", t[i].ulValueLen);
        if (l->has_code)
            result = l->code;
    }
    return result;
}

/* A real call that writes output: single-part (C_Sign(session, in, in_len,
 * out, out_len), ...) when `single` is set, else final (C_SignFinal(session,
 * out, out_len), ...). One description, so that what a fault does to the
 * real operation is written once for both. */
typedef CK_RV (*fm_final_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*fm_single_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef struct {
    fm_single_fn single;
    fm_final_fn final;
    CK_BYTE_PTR in;
    CK_ULONG inlen;
} fm_output_call;

static CK_RV output_call(const fm_output_call *o, CK_SESSION_HANDLE real, CK_BYTE_PTR out,
                         CK_ULONG_PTR outlen)
{
    if (o->single)
        return o->single(real, o->in, o->inlen, out, outlen);
    return o->final(real, out, outlen);
}

/* What an injected fault leaves of the real output call's operation. With
 * `keep` (CKR_BUFFER_TOO_SMALL) the operation stays and *outlen gets the
 * real length; otherwise the operation is finished into a scratch buffer,
 * wiped and discarded, so it is gone as after a real failure. */
static void fault_output(const fm_output_call *o, CK_SESSION_HANDLE real, int keep,
                         CK_ULONG_PTR outlen)
{
    CK_ULONG n = 0;
    if (output_call(o, real, NULL, &n) != CKR_OK)
        return; /* that failure ended the operation */
    if (keep) {
        if (outlen)
            *outlen = n;
        return;
    }
    CK_BYTE *scratch = calloc(1, n ? n : 1);
    if (!scratch)
        return;
    output_call(o, real, scratch, &n);
    explicit_bzero(scratch, n);
    free(scratch);
}

/* The output call forwarded, its length as a JWKE_FAULT_LENGTHS rule may
 * misreport it (only C_Sign has such rules; the others pass unchanged). */
static CK_RV forward_output(fm_call *c, const fm_output_call *o, CK_SESSION_HANDLE real,
                            CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
    CK_ULONG buffer = outlen ? *outlen : 0;
    CK_RV rv = output_call(o, real, out, outlen);
    return misreport_output(c, out != NULL, outlen, buffer, rv);
}

enum { OP_SIGN, OP_VERIFY, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST };

/* Ends the multi-part operation `op` after a fault on one of its updates. */
static void terminate_op(CK_FUNCTION_LIST_PTR R, CK_SESSION_HANDLE real, int op)
{
    static CK_BYTE junk[1];
    fm_output_call final = { 0 };
    switch (op) {
    case OP_SIGN: final.final = R->C_SignFinal; break;
    case OP_ENCRYPT: final.final = R->C_EncryptFinal; break;
    case OP_DECRYPT: final.final = R->C_DecryptFinal; break;
    case OP_DIGEST: final.final = R->C_DigestFinal; break;
    case OP_VERIFY: R->C_VerifyFinal(real, junk, sizeof junk); return;
    }
    fault_output(&final, real, 0, NULL);
}

/* The wrappers' bodies, as one macro family. Every wrapper counts its call
 * (enter), answers a fault or forwards, and counts the outcome (finish); the
 * family members differ only in what the real module must see before a
 * fault is delivered and in how the call is forwarded.
 *
 * Calls on a session (the wrapper's session parameter is hSession):
 *
 *   SESSION_BASE(name, on_fault, forward) expands to
 *       enter_session(FN_name, ...)             (sets c, and real = the real
 *                                                session behind hSession)
 *       injected fault: on_fault; rv = deliver(the fault, on the session)
 *       otherwise:      rv = forward            (an expression using `real`)
 *       return finish(&c, rv)
 *   SESSION_CALL(name, args)     forwarded as c.R->name args (args name
 *                                `real` as the session), or failed
 *   UPDATE_CALL(name, op, args)  as SESSION_CALL; a fault ends operation op
 *   VERIFY_CALL(name, args)      as SESSION_CALL; a fault still forwards the
 *                                call (its result ignored), which ends the
 *                                operation
 *   SINGLE_CALL(name, in, inlen, out, outlen)
 *   FINAL_CALL(name, out, outlen)
 *                                output calls: a fault keeps or ends the
 *                                operation (fault_output), forwarding may
 *                                misreport the length (forward_output)
 */
#define SESSION_BASE(name, on_fault, forward)                              \
    do {                                                                   \
        fm_call c;                                                         \
        CK_SESSION_HANDLE real = 0;                                        \
        CK_RV rv = enter_session(FN_##name, &c, hSession, &real);          \
        if (rv == CKR_OK && c.fault) {                                     \
            on_fault;                                                      \
            rv = deliver(&c, 1, hSession, real);                           \
        } else if (rv == CKR_OK) {                                         \
            rv = (forward);                                                \
        }                                                                  \
        return finish(&c, rv);                                             \
    } while (0)

#define SESSION_CALL(name, args) SESSION_BASE(name, (void)0, c.R->name args)
#define UPDATE_CALL(name, op, args) SESSION_BASE(name, terminate_op(c.R, real, op), c.R->name args)
#define VERIFY_CALL(name, args) SESSION_BASE(name, c.R->name args, c.R->name args)

/* `o` is a pointer to the call's fm_output_call, built from c.R. */
#define OUTPUT_CALL(name, o, out, outlen)                                  \
    SESSION_BASE(name, fault_output(o, real, c.fault == CKR_BUFFER_TOO_SMALL, outlen), \
                 forward_output(&c, o, real, out, outlen))
#define SINGLE_CALL(name, in, inlen, out, outlen)                          \
    OUTPUT_CALL(name, (&(fm_output_call){ c.R->name, NULL, in, inlen }), out, outlen)
#define FINAL_CALL(name, out, outlen)                                      \
    OUTPUT_CALL(name, (&(fm_output_call){ NULL, c.R->name, NULL, 0 }), out, outlen)

/* The wrapper w_name(params) of a call on a session that is only forwarded
 * (or failed): `args` is the real call's argument list, as in SESSION_CALL. */
#define FM_SESSION_WRAPPER(name, params, args)                             \
    static CK_RV w_##name params                                           \
    {                                                                      \
        SESSION_CALL(name, args);                                          \
    }

/* While the token is removed: CKR_TOKEN_NOT_PRESENT for a slot that exists. */
static CK_RV token_absent(fm_call *c, CK_SLOT_ID slot)
{
    CK_SLOT_INFO info;
    CK_RV rv = c->R->C_GetSlotInfo(slot, &info);
    return rv == CKR_OK ? CKR_TOKEN_NOT_PRESENT : rv;
}

/* Calls not on a session:
 *
 *   SLOT_BASE(name, removal_wins, when_removed, forward) expands to
 *       enter(FN_name, ...)                     (sets c)
 *       token removed and removal_wins: rv = when_removed (removal wins over
 *                                                an injected fault)
 *       injected fault:  rv = deliver(the fault)
 *       otherwise:       rv = forward
 *       return finish(&c, rv)
 *   PLAIN_CALL(name, args)        needs neither a session nor a token:
 *                                 forwarded as c.R->name args, or failed
 *   TOKEN_CALL(name, slot, args)  as PLAIN_CALL, for a call that needs the
 *                                 token in `slot` (CKR_TOKEN_NOT_PRESENT
 *                                 while it is removed)
 */
#define SLOT_BASE(name, removal_wins, when_removed, forward)               \
    do {                                                                   \
        fm_call c;                                                         \
        CK_RV rv = enter(FN_##name, &c);                                   \
        if (rv == CKR_OK && (removal_wins) && c.removed)                   \
            rv = (when_removed);                                           \
        else if (rv == CKR_OK && c.fault)                                  \
            rv = deliver(&c, 0, 0, 0);                                     \
        else if (rv == CKR_OK)                                             \
            rv = (forward);                                                \
        return finish(&c, rv);                                             \
    } while (0)

#define PLAIN_CALL(name, args) SLOT_BASE(name, 0, CKR_OK, c.R->name args)
#define TOKEN_CALL(name, slot, args) SLOT_BASE(name, 1, token_absent(&c, slot), c.R->name args)

/* ------------------------------------------------------------------------ */
/* Loading the real module                                                   */

static CK_FUNCTION_LIST function_list;

static int load_real_locked(char *err, size_t errlen)
{
    if (st.real)
        return 0;
    const char *path = st.module_path;
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        set_err(err, errlen, "JWKE_FAULT_MODULE: cannot load '%s': %s", path, dlerror());
        return -1;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(library, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR list = NULL;
    if (!get) {
        set_err(err, errlen, "JWKE_FAULT_MODULE: '%s' has no C_GetFunctionList", path);
    } else if (get == C_GetFunctionList) {
        /* (calling it would take the lock held here) */
        set_err(err, errlen, "JWKE_FAULT_MODULE: '%s' is the fault module itself", path);
    } else if (get(&list) != CKR_OK || !list) {
        set_err(err, errlen, "JWKE_FAULT_MODULE: C_GetFunctionList of '%s' failed", path);
        list = NULL;
    }
    if (!list) {
        dlclose(library);
        return -1;
    }
    st.real_library = library;
    st.real = list;
    return 0;
}

static char *env_dup(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        v = fallback;
    return v ? strdup(v) : NULL;
}

static void read_process_settings_locked(void)
{
    free(st.module_path);
    free(st.control_path);
    free(st.stats_path);
    st.module_path = env_dup("JWKE_FAULT_MODULE", FM_DEFAULT_MODULE);
    st.control_path = env_dup("JWKE_FAULT_CONTROL", NULL);
    st.stats_path = env_dup("JWKE_FAULT_STATS", NULL);
    const char *v = getenv("JWKE_FAULT_CONTROL_INTERVAL_MS");
    st.control_interval_ms = v ? atol(v) : 0;
    if (st.control_interval_ms < 0)
        st.control_interval_ms = 0;
    int flag = 0;
    v = getenv("JWKE_FAULT_STATS_SYNC");
    st.stats_sync = v && parse_bool(v, strlen(v), &flag) == 0 && flag;
    v = getenv("JWKE_FAULT_VERBOSE");
    flag = 0;
    st.verbose = v && parse_bool(v, strlen(v), &flag) == 0 && flag;
    v = getenv("JWKE_FAULT_FORK_STRICT");
    flag = 0;
    st.fork_strict = v && parse_bool(v, strlen(v), &flag) == 0 && flag;
    clock_gettime(CLOCK_MONOTONIC, &st.control_checked);
}

/* ------------------------------------------------------------------------ */
/* The functions                                                             */

static CK_RV w_C_Initialize(CK_VOID_PTR pInitArgs)
{
    fm_call c;
    char err[512];
    memset(&c, 0, sizeof c);
    c.fn = FN_C_Initialize;

    lock();
    if (st.child_uninitialized) {
        /* A strict child initializing, as PKCS#11 asks of it: the real
         * module's state came along with the fork, so nothing is forwarded. */
        st.child_uninitialized = 0;
        st.calls[FN_C_Initialize]++;
        st.window[FN_C_Initialize]++;
        vlog("forked child initialized");
        unlock();
        return CKR_OK;
    }
    if (!st.initialized) {
        fm_config cfg;
        fm_fileid id;
        read_process_settings_locked();
        if (build_config(&cfg, &id, err, sizeof err) != 0) {
            st.calls[FN_C_Initialize]++;
            st.errors[FN_C_Initialize]++;
            unlock();
            fprintf(stderr, "jwke_faultmod: %s\n", err);
            return CKR_GENERAL_ERROR;
        }
        st.control_id = id;
        apply_config_locked(&cfg);
        if (load_real_locked(err, sizeof err) != 0) {
            st.calls[FN_C_Initialize]++;
            st.errors[FN_C_Initialize]++;
            unlock();
            fprintf(stderr, "jwke_faultmod: %s\n", err);
            return CKR_GENERAL_ERROR;
        }
    }
    st.calls[FN_C_Initialize]++;
    c.number = ++st.window[FN_C_Initialize];
    c.R = st.real;
    c.sync = st.stats_sync;
    decide_fault_locked(&c);
    unsigned long latency = st.cfg.latency_us[FN_C_Initialize];
    unlock();
    if (latency)
        sleep_us(latency);
    if (c.fault)
        return finish(&c, deliver(&c, 0, 0, 0));

    CK_RV rv = c.R->C_Initialize(pInitArgs);
    lock();
    if (rv == CKR_OK) {
        /* Only the first initialization of a count window restarts it: a
         * caller that re-initializes to recover must not re-arm the very
         * faults it is recovering from. */
        if (!st.window_initialized)
            reset_windows(1);
        st.window_initialized = 1;
        sessions_drop(1, 0, 0); /* a fresh real module has no sessions */
    }
    if (rv == CKR_OK || (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && !st.initialized)) {
        st.real_owned = rv == CKR_OK;
        st.initialized = 1;
    }
    unlock();
    return finish(&c, rv);
}

/* C_Finalize forwarded: the real module finalized and unloaded. */
static CK_RV finalize_real(fm_call *c, CK_VOID_PTR pReserved)
{
    lock();
    int owned = st.real_owned;
    unlock();
    /* Finalize the real module only if we initialized it: when it was
     * already initialized (by another user of the same library in this
     * process, or inherited across fork), it is not ours to finalize. */
    CK_RV rv = owned ? c->R->C_Finalize(pReserved) : (pReserved ? CKR_ARGUMENTS_BAD : CKR_OK);
    if (rv == CKR_OK) {
        lock();
        st.initialized = 0;
        st.real_owned = 0;
        /* Our sessions end with us; the real C_Finalize closed them already
         * when we owned the module. */
        sessions_drop(1, 0, !owned);
        write_stats_locked("finalize");
        /* Unloaded here, loaded again by the next C_Initialize. */
        if (st.real_library) {
            dlclose(st.real_library);
            st.real_library = NULL;
            st.real = NULL;
        }
        unlock();
    }
    return rv;
}

static CK_RV w_C_Finalize(CK_VOID_PTR pReserved)
{
    SLOT_BASE(C_Finalize, 0, CKR_OK, finalize_real(&c, pReserved));
}

static CK_RV w_C_GetInfo(CK_INFO_PTR pInfo)
{
    PLAIN_CALL(C_GetInfo, (pInfo));
}

FM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    lock();
    st.calls[FN_C_GetFunctionList]++;
    st.window[FN_C_GetFunctionList]++;
    unlock();
    if (!ppFunctionList)
        return CKR_ARGUMENTS_BAD;
    *ppFunctionList = &function_list;
    return CKR_OK;
}

static CK_RV w_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    return C_GetFunctionList(ppFunctionList);
}

/* C_GetSlotList forwarded: while the token is removed no slot has one;
 * otherwise the count as a JWKE_FAULT_LENGTHS rule may misreport it. */
static CK_RV list_slots(fm_call *c, CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList,
                        CK_ULONG_PTR pulCount)
{
    if (c->removed && tokenPresent) {
        if (!pulCount)
            return CKR_ARGUMENTS_BAD;
        *pulCount = 0;
        return CKR_OK;
    }
    CK_ULONG buffer = pulCount ? *pulCount : 0;
    CK_RV rv = c->R->C_GetSlotList(tokenPresent, pSlotList, pulCount);
    return misreport_output(c, pSlotList != NULL, pulCount, buffer, rv);
}

static CK_RV w_C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
    SLOT_BASE(C_GetSlotList, 0, CKR_OK, list_slots(&c, tokenPresent, pSlotList, pulCount));
}

/* C_GetSlotInfo forwarded: a removed token's slot says so. */
static CK_RV slot_info(fm_call *c, CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    CK_RV rv = c->R->C_GetSlotInfo(slotID, pInfo);
    if (rv == CKR_OK && c->removed && pInfo)
        pInfo->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
    return rv;
}

static CK_RV w_C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    SLOT_BASE(C_GetSlotInfo, 0, CKR_OK, slot_info(&c, slotID, pInfo));
}

/* C_GetTokenInfo forwarded, with the PIN states and session limit a test
 * asks for. */
static CK_RV token_info(fm_call *c, CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    CK_RV rv = c->R->C_GetTokenInfo(slotID, pInfo);
    if (rv == CKR_OK) {
        lock();
        pInfo->flags |= st.cfg.token_flags;
        report_session_limit_locked(pInfo);
        unlock();
    }
    return rv;
}

static CK_RV w_C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    SLOT_BASE(C_GetTokenInfo, 1, token_absent(&c, slotID), token_info(&c, slotID, pInfo));
}

static CK_RV w_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList,
                                  CK_ULONG_PTR pulCount)
{
    TOKEN_CALL(C_GetMechanismList, slotID, (slotID, pMechanismList, pulCount));
}

static CK_RV w_C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type,
                                  CK_MECHANISM_INFO_PTR pInfo)
{
    TOKEN_CALL(C_GetMechanismInfo, slotID, (slotID, type, pInfo));
}

static CK_RV w_C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                           CK_UTF8CHAR_PTR pLabel)
{
    TOKEN_CALL(C_InitToken, slotID, (slotID, pPin, ulPinLen, pLabel));
}

FM_SESSION_WRAPPER(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
                   (real, pPin, ulPinLen))

FM_SESSION_WRAPPER(C_SetPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin,
                              CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen),
                   (real, pOldPin, ulOldLen, pNewPin, ulNewLen))

static CK_RV w_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
                             CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
    fm_call c;
    CK_RV rv = enter(FN_C_OpenSession, &c);
    if (rv != CKR_OK)
        return finish(&c, rv);
    if (c.removed)
        return finish(&c, token_absent(&c, slotID));
    lock();
    int full = st.cfg.max_sessions && st.nsessions >= st.cfg.max_sessions;
    unlock();
    if (full)
        return finish(&c, CKR_SESSION_COUNT);
    if (c.fault)
        return finish(&c, deliver(&c, 0, 0, 0));
    if (!phSession)
        return finish(&c, CKR_ARGUMENTS_BAD);
    CK_SESSION_HANDLE real = 0;
    rv = c.R->C_OpenSession(slotID, flags, pApplication, Notify, &real);
    if (rv != CKR_OK)
        return finish(&c, rv);
    fm_session *s = calloc(1, sizeof *s);
    if (!s) {
        c.R->C_CloseSession(real);
        return finish(&c, CKR_HOST_MEMORY);
    }
    lock();
    s->handle = st.next_handle++;
    s->real = real;
    s->slot = slotID;
    clock_gettime(CLOCK_MONOTONIC, &s->last_used);
    fm_session **pp = &st.sessions[s->handle % FM_BUCKETS];
    s->next = *pp;
    *pp = s;
    st.nsessions++;
    if (st.nsessions > st.sessions_peak)
        st.sessions_peak = st.nsessions;
    *phSession = s->handle;
    unlock();
    return finish(&c, CKR_OK);
}

static CK_RV w_C_CloseSession(CK_SESSION_HANDLE hSession)
{
    fm_call c;
    CK_SESSION_HANDLE real = 0;
    CK_RV rv = enter_session(FN_C_CloseSession, &c, hSession, &real);
    if (rv == CKR_DEVICE_REMOVED) {
        lock();
        session_forget(hSession);
        unlock();
    }
    if (rv != CKR_OK)
        return finish(&c, rv);
    if (c.fault)
        return finish(&c, deliver(&c, 1, hSession, real));
    rv = c.R->C_CloseSession(real);
    if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
        lock();
        session_forget(hSession);
        unlock();
    }
    return finish(&c, rv);
}

/* C_CloseAllSessions: our sessions of the slot go when the real module's
 * do. While the token is removed the removal closed the real ones already,
 * and it succeeds for a slot that exists. */
static CK_RV close_slot_sessions(fm_call *c, CK_SLOT_ID slotID)
{
    CK_SLOT_INFO info;
    CK_RV rv = c->removed ? c->R->C_GetSlotInfo(slotID, &info) : c->R->C_CloseAllSessions(slotID);
    if (rv == CKR_OK) {
        lock();
        sessions_drop(0, slotID, 0);
        unlock();
    }
    return rv;
}

static CK_RV w_C_CloseAllSessions(CK_SLOT_ID slotID)
{
    SLOT_BASE(C_CloseAllSessions, 1, close_slot_sessions(&c, slotID),
              close_slot_sessions(&c, slotID));
}

FM_SESSION_WRAPPER(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo),
                   (real, pInfo))

FM_SESSION_WRAPPER(C_GetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
                                         CK_ULONG_PTR pulOperationStateLen),
                   (real, pOperationState, pulOperationStateLen))

FM_SESSION_WRAPPER(C_SetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
                                         CK_ULONG ulOperationStateLen,
                                         CK_OBJECT_HANDLE hEncryptionKey,
                                         CK_OBJECT_HANDLE hAuthenticationKey),
                   (real, pOperationState, ulOperationStateLen, hEncryptionKey, hAuthenticationKey))

FM_SESSION_WRAPPER(C_Login, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                             CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
                   (real, userType, pPin, ulPinLen))

FM_SESSION_WRAPPER(C_CreateObject, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
                                    CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject),
                   (real, pTemplate, ulCount, phObject))

FM_SESSION_WRAPPER(C_CopyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                                  CK_OBJECT_HANDLE_PTR phNewObject),
                   (real, hObject, pTemplate, ulCount, phNewObject))

FM_SESSION_WRAPPER(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject),
                   (real, hObject))

FM_SESSION_WRAPPER(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                     CK_ULONG_PTR pulSize),
                   (real, hObject, pulSize))

/* C_GetAttributeValue forwarded; with JWKE_FAULT_LENGTHS rules, the lengths
 * as they misreport them (misreport_attributes needs the buffer sizes the
 * caller gave, which the real call overwrites). */
static CK_RV get_attributes(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE hObject,
                            CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    if (!c->nlengths || !pTemplate || !ulCount)
        return c->R->C_GetAttributeValue(real, hObject, pTemplate, ulCount);
    CK_ULONG *given = malloc(ulCount * sizeof *given);
    if (!given)
        return CKR_HOST_MEMORY;
    for (CK_ULONG i = 0; i < ulCount; i++)
        given[i] = pTemplate[i].ulValueLen;
    CK_RV rv = c->R->C_GetAttributeValue(real, hObject, pTemplate, ulCount);
    rv = misreport_attributes(c, real, hObject, pTemplate, ulCount, given, rv);
    free(given);
    return rv;
}

static CK_RV w_C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                   CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    SESSION_BASE(C_GetAttributeValue, (void)0,
                 get_attributes(&c, real, hObject, pTemplate, ulCount));
}

FM_SESSION_WRAPPER(C_SetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                         CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
                   (real, hObject, pTemplate, ulCount))

FM_SESSION_WRAPPER(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
                                       CK_ULONG ulCount),
                   (real, pTemplate, ulCount))

/* C_FindObjects forwarded, the count as a JWKE_FAULT_LENGTHS rule may
 * misreport it (the caller's buffer holds ulMaxObjectCount handles). */
static CK_RV find_objects(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE_PTR phObject,
                          CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
    CK_RV rv = c->R->C_FindObjects(real, phObject, ulMaxObjectCount, pulObjectCount);
    return misreport_output(c, phObject != NULL, pulObjectCount, ulMaxObjectCount, rv);
}

static CK_RV w_C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject,
                             CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
    SESSION_BASE(C_FindObjects, (void)0,
                 find_objects(&c, real, phObject, ulMaxObjectCount, pulObjectCount));
}

FM_SESSION_WRAPPER(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism),
                   (real, pMechanism))

static CK_RV w_C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
    UPDATE_CALL(C_DigestKey, OP_DIGEST, (real, hKey));
}

/* C_Sign forwards as the single-part family does, then may corrupt what
 * the token returned (corrupt_signature). */
static CK_RV forward_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                            CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    SINGLE_CALL(C_Sign, pData, ulDataLen, pSignature, pulSignatureLen);
}

static CK_RV w_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                      CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    CK_ULONG buffer = pulSignatureLen ? *pulSignatureLen : 0;
    return corrupt_signature(forward_C_Sign(hSession, pData, ulDataLen, pSignature, pulSignatureLen),
                             pSignature, pulSignatureLen, buffer);
}

static CK_RV w_C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                        CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    VERIFY_CALL(C_Verify, (real, pData, ulDataLen, pSignature, ulSignatureLen));
}

static CK_RV w_C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                             CK_ULONG ulSignatureLen)
{
    VERIFY_CALL(C_VerifyFinal, (real, pSignature, ulSignatureLen));
}

FM_SESSION_WRAPPER(C_GenerateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                   CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                                   CK_OBJECT_HANDLE_PTR phKey),
                   (real, pMechanism, pTemplate, ulCount, phKey))

FM_SESSION_WRAPPER(C_GenerateKeyPair, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                       CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                                       CK_ULONG ulPublicKeyAttributeCount,
                                       CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                                       CK_ULONG ulPrivateKeyAttributeCount,
                                       CK_OBJECT_HANDLE_PTR phPublicKey,
                                       CK_OBJECT_HANDLE_PTR phPrivateKey),
                   (real, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
                    pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey))

FM_SESSION_WRAPPER(C_WrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                               CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey,
                               CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen),
                   (real, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen))

FM_SESSION_WRAPPER(C_UnwrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                 CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey,
                                 CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
                                 CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey),
                   (real, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate,
                    ulAttributeCount, phKey))

FM_SESSION_WRAPPER(C_DeriveKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                 CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate,
                                 CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey),
                   (real, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey))

FM_SESSION_WRAPPER(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed,
                                  CK_ULONG ulSeedLen),
                   (real, pSeed, ulSeedLen))

FM_SESSION_WRAPPER(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData,
                                      CK_ULONG ulRandomLen),
                   (real, RandomData, ulRandomLen))

static CK_RV w_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
    PLAIN_CALL(C_WaitForSlotEvent, (flags, pSlot, pReserved));
}

/* The wrappers that differ only in their name, written once per family:
 * the family's parameter list, and how the wrapper treats its calls (the
 * *_CALL macros above). The others are written out above. */

/* C_xInit(session, mechanism, key): forwarded, or failed. */
#define FM_INIT_FUNCTIONS(X)                                                     \
    X(C_EncryptInit) X(C_DecryptInit) X(C_SignInit) X(C_SignRecoverInit)         \
    X(C_VerifyInit) X(C_VerifyRecoverInit)
#define FM_INIT_WRAPPER(name)                                                    \
    FM_SESSION_WRAPPER(name, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, \
                              CK_OBJECT_HANDLE hKey), (real, pMechanism, hKey))
FM_INIT_FUNCTIONS(FM_INIT_WRAPPER)

/* C_x(session): forwarded, or failed. */
#define FM_SESSION_ONLY_FUNCTIONS(X)                                             \
    X(C_Logout) X(C_FindObjectsFinal) X(C_GetFunctionStatus) X(C_CancelFunction)
#define FM_SESSION_ONLY_WRAPPER(name) FM_SESSION_WRAPPER(name, (CK_SESSION_HANDLE hSession), (real))
FM_SESSION_ONLY_FUNCTIONS(FM_SESSION_ONLY_WRAPPER)

/* Single-part calls with output, C_x(session, in, in_len, out, out_len):
 * see SINGLE_CALL. */
#define FM_SINGLE_FUNCTIONS(X)                                                   \
    X(C_Encrypt) X(C_Decrypt) X(C_Digest) X(C_SignRecover) X(C_VerifyRecover)
#define FM_SINGLE_WRAPPER(name)                                                  \
    static CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulInLen, \
                          CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen)              \
    {                                                                            \
        SINGLE_CALL(name, pIn, ulInLen, pOut, pulOutLen);                        \
    }
FM_SINGLE_FUNCTIONS(FM_SINGLE_WRAPPER)

/* C_xFinal(session, out, out_len): see FINAL_CALL. */
#define FM_FINAL_FUNCTIONS(X)                                                    \
    X(C_EncryptFinal) X(C_DecryptFinal) X(C_DigestFinal) X(C_SignFinal)
#define FM_FINAL_WRAPPER(name)                                                   \
    static CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut,          \
                          CK_ULONG_PTR pulOutLen)                                \
    {                                                                            \
        FINAL_CALL(name, pOut, pulOutLen);                                       \
    }
FM_FINAL_FUNCTIONS(FM_FINAL_WRAPPER)

/* Multi-part updates, X(name, operation): C_x(session, part, part_len)
 * without output, C_x(session, in, in_len, out, out_len) with it; a fault
 * ends the operation (see UPDATE_CALL). */
#define FM_UPDATE_FUNCTIONS(X)                                                   \
    X(C_DigestUpdate, OP_DIGEST) X(C_SignUpdate, OP_SIGN) X(C_VerifyUpdate, OP_VERIFY)
#define FM_UPDATE_WRAPPER(name, op)                                              \
    static CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) \
    {                                                                            \
        UPDATE_CALL(name, op, (real, pPart, ulPartLen));                         \
    }
FM_UPDATE_FUNCTIONS(FM_UPDATE_WRAPPER)

#define FM_UPDATE_OUT_FUNCTIONS(X) X(C_EncryptUpdate, OP_ENCRYPT) X(C_DecryptUpdate, OP_DECRYPT)
#define FM_UPDATE_OUT_WRAPPER(name, op)                                          \
    static CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulInLen, \
                          CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen)              \
    {                                                                            \
        UPDATE_CALL(name, op, (real, pIn, ulInLen, pOut, pulOutLen));            \
    }
FM_UPDATE_OUT_FUNCTIONS(FM_UPDATE_OUT_WRAPPER)

/* The dual-function updates, C_x(session, in, in_len, out, out_len): no
 * operation of their own to end, so forwarded, or failed. */
#define FM_DUAL_FUNCTIONS(X)                                                     \
    X(C_DigestEncryptUpdate) X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate)     \
    X(C_DecryptVerifyUpdate)
#define FM_DUAL_WRAPPER(name)                                                    \
    FM_SESSION_WRAPPER(name, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulInLen, \
                              CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen),            \
                       (real, pIn, ulInLen, pOut, pulOutLen))
FM_DUAL_FUNCTIONS(FM_DUAL_WRAPPER)

static CK_FUNCTION_LIST function_list = {
    .version = { 2, 40 },
#define FM_SLOT(name) .name = w_##name,
    FM_FUNCTIONS(FM_SLOT)
#undef FM_SLOT
};

/* ------------------------------------------------------------------------ */
/* Fork and unload                                                           */

static void atfork_prepare(void) { lock(); }
static void atfork_parent(void) { unlock(); }

static void atfork_child(void)
{
    /* A new process: fresh counts and random sequence, same settings. */
    memset(st.calls, 0, sizeof st.calls);
    memset(st.window, 0, sizeof st.window);
    memset(st.injected, 0, sizeof st.injected);
    memset(st.errors, 0, sizeof st.errors);
    st.reloads = st.control_errors = st.removals = st.insertions = 0;
    st.sessions_peak = st.nsessions; /* what the child inherited */
    for (size_t i = 0; i < st.cfg.nrules; i++)
        st.cfg.rules[i].burst_left = 0;
    st.rng = st.cfg.seed;
    if (st.fork_strict && st.initialized) {
        /* As a networked HSM's client library behaves: the child must call
         * C_Initialize before anything else, and the parent's sessions are
         * not the child's (closing them would close the parent's). */
        st.child_uninitialized = 1;
        sessions_drop(1, 0, 0);
    }
    unlock();
}

__attribute__((constructor)) static void faultmod_load(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

__attribute__((destructor)) static void faultmod_unload(void)
{
    lock();
    if (st.initialized) {
        /* Never finalized (a host that exits without C_Finalize, or drops an
         * inherited generation): keep everything, other threads may still
         * be calling, and the real module stays loaded. */
        write_stats_locked("unload");
    } else {
        sessions_drop(1, 0, 0);
        config_free(&st.cfg);
        free(st.module_path);
        free(st.control_path);
        free(st.stats_path);
        st.module_path = st.control_path = st.stats_path = NULL;
    }
    unlock();
}
