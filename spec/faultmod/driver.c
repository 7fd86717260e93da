/*
 * jwke_faultmod_driver: in-process checks of libjwke_faultmod.so that
 * pkcs11-tool cannot show (counts within one process, operation state after
 * an injected fault, session handles across removal and re-insertion,
 * threads, fork). Run from spec/project/faultmod_spec.lua:
 *
 *   jwke_faultmod_driver MODULE TOKEN_LABEL PIN TMPDIR SCENARIO
 *
 * Each scenario sets the JWKE_FAULT_* variables it needs itself (setenv
 * before C_Initialize), prints "ok ..." lines as it goes and exits 0, or
 * prints "FAIL ..." and exits 1. The token must exist; the scenarios make (or
 * reuse) an EC P-256 key pair labelled "faultmod-ec" on it.
 */
#include <p11-kit/pkcs11.h>

#include "ckr_names.h" /* the core's one table of CKR_ names */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *module_path, *token_label, *pin, *tmpdir;
static void *library;
static CK_FUNCTION_LIST_PTR F;
static int (*faultmod_stats)(char *, size_t);

static const char *rvname(CK_RV rv)
{
    static char buf[32];
    const char *name = jwke_ckr_name(rv);
    if (name)
        return name;
    snprintf(buf, sizeof buf, "0x%lx", (unsigned long)rv);
    return buf;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    exit(1);
}

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ok(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("ok ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

#define EXPECT_RV(expr, want)                                                        \
    do {                                                                             \
        CK_RV expect_rv_ = (expr);                                                   \
        if (expect_rv_ != (CK_RV)(want))                                             \
            fail("line %d: %s returned %s, expected %s", __LINE__, #expr,            \
                 rvname(expect_rv_), rvname(want));                                  \
    } while (0)

#define EXPECT(cond, ...)                                                            \
    do {                                                                             \
        if (!(cond))                                                                 \
            fail(__VA_ARGS__);                                                       \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static char *tmp_path(const char *name)
{
    static char bufs[8][4096];
    static int next;
    char *buf = bufs[next++ % 8];
    snprintf(buf, sizeof bufs[0], "%s/%s", tmpdir, name);
    return buf;
}

/* Writes the control file atomically (temporary file + rename). */
static void write_control(const char *path, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    EXPECT(f, "cannot write %s: %s", tmp, strerror(errno));
    fputs(text, f);
    fclose(f);
    EXPECT(rename(tmp, path) == 0, "rename %s: %s", tmp, strerror(errno));
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* "name value" lines: the value of name, or -1. */
static long stat_in(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return atol(p + n + 1);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

static long stat_now(const char *name)
{
    static char buf[65536];
    int n = faultmod_stats(buf, sizeof buf);
    EXPECT(n > 0 && (size_t)n < sizeof buf, "jwke_faultmod_stats returned %d", n);
    long v = stat_in(buf, name);
    return v < 0 ? 0 : v;
}

static void load(void)
{
    library = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
    EXPECT(library, "dlopen %s: %s", module_path, dlerror());
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(library, "C_GetFunctionList");
    EXPECT(get, "no C_GetFunctionList");
    EXPECT_RV(get(&F), CKR_OK);
    faultmod_stats = (int (*)(char *, size_t))dlsym(library, "jwke_faultmod_stats");
    EXPECT(faultmod_stats, "no jwke_faultmod_stats in %s", module_path);
}

static CK_RV initialize(void)
{
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    return F->C_Initialize(&args);
}

static CK_SLOT_ID find_slot(void)
{
    /* a test run's token folder may hold many tokens: size the list */
    static CK_SLOT_ID slots[4096];
    CK_ULONG n = 0;
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    EXPECT(n <= sizeof slots / sizeof slots[0], "%lu slots", (unsigned long)n);
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        if (F->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        size_t len = strlen(token_label);
        if (len <= sizeof info.label && memcmp(info.label, token_label, len) == 0 &&
            (len == sizeof info.label || info.label[len] == ' '))
            return slots[i];
    }
    fail("no token labelled '%s'", token_label);
}

static CK_SESSION_HANDLE open_session(CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE h = 0;
    EXPECT_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h), CKR_OK);
    return h;
}

static void login(CK_SESSION_HANDLE h)
{
    CK_RV rv = F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    EXPECT(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN, "C_Login: %s", rvname(rv));
}

static const char key_label[] = "faultmod-ec";

static int find_key(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_LABEL, (void *)key_label, sizeof key_label - 1 },
    };
    CK_ULONG n = 0;
    EXPECT_RV(F->C_FindObjectsInit(h, t, 2), CKR_OK);
    EXPECT_RV(F->C_FindObjects(h, out, 1, &n), CKR_OK);
    EXPECT_RV(F->C_FindObjectsFinal(h), CKR_OK);
    return n == 1;
}

/* The EC key pair (made once per token). */
static void key_pair(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *priv, CK_OBJECT_HANDLE *pub)
{
    if (find_key(h, CKO_PRIVATE_KEY, priv) && find_key(h, CKO_PUBLIC_KEY, pub))
        return;
    static CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
    CK_BBOOL yes = CK_TRUE;
    CK_BYTE id[] = { 0xfa, 0x17 };
    CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    CK_ATTRIBUTE pub_t[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_VERIFY, &yes, sizeof yes },
        { CKA_EC_PARAMS, p256, sizeof p256 },
        { CKA_LABEL, (void *)key_label, sizeof key_label - 1 },
        { CKA_ID, id, sizeof id },
    };
    CK_ATTRIBUTE priv_t[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_PRIVATE, &yes, sizeof yes },
        { CKA_SENSITIVE, &yes, sizeof yes },
        { CKA_SIGN, &yes, sizeof yes },
        { CKA_LABEL, (void *)key_label, sizeof key_label - 1 },
        { CKA_ID, id, sizeof id },
    };
    EXPECT_RV(F->C_GenerateKeyPair(h, &mech, pub_t, 5, priv_t, 6, pub, priv), CKR_OK);
}

/* A new session on slot, logged in, with the EC key pair: where most
 * scenarios start. */
static CK_SESSION_HANDLE key_session(CK_SLOT_ID slot, CK_OBJECT_HANDLE *priv,
                                     CK_OBJECT_HANDLE *pub)
{
    CK_SESSION_HANDLE h = open_session(slot);
    login(h);
    key_pair(h, priv, pub);
    return h;
}

/* A session HMAC key (gone with the session). */
static CK_OBJECT_HANDLE hmac_key(CK_SESSION_HANDLE h)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = 32;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_GENERIC_SECRET;
    CK_MECHANISM mech = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
    CK_ATTRIBUTE t[] = {
        { CKA_CLASS, &cls, sizeof cls },     { CKA_KEY_TYPE, &type, sizeof type },
        { CKA_TOKEN, &no, sizeof no },       { CKA_SIGN, &yes, sizeof yes },
        { CKA_VERIFY, &yes, sizeof yes },    { CKA_VALUE_LEN, &len, sizeof len },
    };
    CK_OBJECT_HANDLE key = 0;
    EXPECT_RV(F->C_GenerateKey(h, &mech, t, 6, &key), CKR_OK);
    return key;
}

static CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
static CK_BYTE digest[32] = "0123456789abcdef0123456789abcde";

static CK_RV sign_init(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE priv)
{
    return F->C_SignInit(h, &ecdsa, priv);
}

static CK_RV sign(CK_SESSION_HANDLE h, CK_BYTE sig[64], CK_ULONG *len)
{
    *len = 64;
    return F->C_Sign(h, digest, sizeof digest, sig, len);
}

static void verify(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE pub, CK_BYTE *sig, CK_ULONG len)
{
    EXPECT_RV(F->C_VerifyInit(h, &ecdsa, pub), CKR_OK);
    EXPECT_RV(F->C_Verify(h, digest, sizeof digest, sig, len), CKR_OK);
}

static void sign_verify(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub)
{
    CK_BYTE sig[64];
    CK_ULONG len;
    EXPECT_RV(sign_init(h, priv), CKR_OK);
    EXPECT_RV(sign(h, sig, &len), CKR_OK);
    verify(h, pub, sig, len);
}

static void clear_env(void)
{
    static const char *const names[] = {
        "JWKE_FAULTS", "JWKE_FAULT_SEED", "JWKE_FAULT_LATENCY_US", "JWKE_FAULT_REMOVED",
        "JWKE_FAULT_MAX_SESSIONS", "JWKE_FAULT_CONTROL", "JWKE_FAULT_CONTROL_INTERVAL_MS",
        "JWKE_FAULT_STATS", "JWKE_FAULT_STATS_SYNC", "JWKE_FAULT_MODULE",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unsetenv(names[i]);
}

/* ------------------------------------------------------------------------ */

/* The function list, and C_Initialize/C_Finalize behaviour. */
static void scenario_list(void)
{
    EXPECT(F->version.major == 2 && F->version.minor == 40, "version %d.%d", F->version.major,
           F->version.minor);
    size_t first = offsetof(CK_FUNCTION_LIST, C_Initialize);
    size_t count = (sizeof(CK_FUNCTION_LIST) - first) / sizeof(void (*)(void));
    EXPECT(count == 68, "CK_FUNCTION_LIST has %zu slots", count);
    for (size_t i = 0; i < count; i++) {
        void (*fp)(void);
        memcpy(&fp, (char *)F + first + i * sizeof fp, sizeof fp);
        EXPECT(fp != NULL, "function slot %zu is empty", i);
    }
    ok("version 2.40, all %zu function slots filled", count);

    CK_INFO info;
    EXPECT_RV(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT_RV(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    ok("calls before C_Initialize: CKR_CRYPTOKI_NOT_INITIALIZED");

    setenv("JWKE_FAULTS", "C_Sgn:CKR_DEVICE_ERROR", 1);
    EXPECT_RV(initialize(), CKR_GENERAL_ERROR);
    setenv("JWKE_FAULTS", "C_Initialize:CKR_DEVICE_ERROR@2", 1);
    EXPECT_RV(initialize(), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    EXPECT(memcmp(info.manufacturerID, "SoftHSM", 7) == 0, "C_GetInfo is not SoftHSM's");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT_RV(initialize(), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT_RV(initialize(), CKR_OK);
    EXPECT_RV(initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    EXPECT(stat_now("calls.C_Initialize") == 5 && stat_now("injected.C_Initialize") == 1,
           "C_Initialize counts");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULTS");
    ok("a bad JWKE_FAULTS fails C_Initialize; C_Initialize:...@2 fails only the 2nd call");
}

/* Counts within one process, through the exported function and the file. */
static void scenario_counts(void)
{
    setenv("JWKE_FAULT_STATS", tmp_path("counts-%p.stats"), 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_ULONG n;
    EXPECT_RV(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    EXPECT_RV(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    CK_OBJECT_HANDLE priv, pub;
    CK_SESSION_HANDLE h = key_session(slot, &priv, &pub);
    long verify_before = stat_now("calls.C_Verify");
    for (int i = 0; i < 5; i++)
        sign_verify(h, priv, pub);
    EXPECT(stat_now("calls.C_Sign") == 5, "calls.C_Sign %ld", stat_now("calls.C_Sign"));
    EXPECT(stat_now("calls.C_SignInit") == 5, "calls.C_SignInit %ld", stat_now("calls.C_SignInit"));
    EXPECT(stat_now("calls.C_Verify") - verify_before == 5, "calls.C_Verify");
    /* two from find_slot (size, then list) and the two above */
    EXPECT(stat_now("calls.C_GetSlotList") == 4, "calls.C_GetSlotList %ld",
           stat_now("calls.C_GetSlotList"));
    EXPECT(stat_now("calls.C_Login") == 1, "calls.C_Login");
    EXPECT(stat_now("calls.C_OpenSession") == 1, "calls.C_OpenSession");
    EXPECT(stat_now("errors.C_Sign") == 0 && stat_now("injected_total") == 0, "errors");
    EXPECT(stat_now("sessions") == 1, "sessions %ld", stat_now("sessions"));
    ok("jwke_faultmod_stats counts C_Sign 5, C_SignInit 5, C_GetSlotList 4, C_Login 1");
    EXPECT_RV(F->C_CloseSession(h), CKR_OK);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    char name[64];
    snprintf(name, sizeof name, "counts-%ld.stats", (long)getpid());
    char *text = read_file(tmp_path(name));
    EXPECT(text, "no stats file %s after C_Finalize", tmp_path(name));
    EXPECT(strstr(text, "reason finalize\n"), "stats reason: %s", text);
    EXPECT(stat_in(text, "calls.C_Finalize") == 1 && stat_in(text, "calls.C_Sign") == 5 &&
           stat_in(text, "calls.C_CloseSession") == 1 && stat_in(text, "sessions") == 0,
           "stats file: %s", text);
    ok("C_Finalize wrote %s (%%p = pid)", tmp_path(name));
}

/* The real module's operation state after injected faults. */
static void scenario_sign_faults(void)
{
    setenv("JWKE_FAULTS",
           "C_Sign:CKR_DEVICE_ERROR@2; C_Sign:CKR_BUFFER_TOO_SMALL@4; "
           "C_SignInit:CKR_FUNCTION_FAILED@4; C_SignUpdate:CKR_DEVICE_ERROR@1; "
           "C_SignFinal:CKR_DEVICE_ERROR@1; C_VerifyUpdate:CKR_DEVICE_ERROR@1; "
           "C_VerifyFinal:CKR_DEVICE_ERROR@1; C_DigestUpdate:CKR_DEVICE_ERROR@1; "
           "C_Digest:CKR_DEVICE_ERROR@1",
           1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_OBJECT_HANDLE priv, pub;
    CK_SESSION_HANDLE h = key_session(find_slot(), &priv, &pub);
    CK_BYTE sig[64];
    CK_ULONG len;

    /* Calls are numbered as the rules count them. */
    EXPECT_RV(sign_init(h, priv), CKR_OK);                       /* SignInit 1 */
    EXPECT_RV(sign(h, sig, &len), CKR_OK);                       /* Sign 1 */
    verify(h, pub, sig, len);
    EXPECT_RV(sign_init(h, priv), CKR_OK);                       /* SignInit 2 */
    EXPECT_RV(sign(h, sig, &len), CKR_DEVICE_ERROR);             /* Sign 2 */
    EXPECT_RV(sign(h, sig, &len), CKR_OPERATION_NOT_INITIALIZED); /* Sign 3 */
    ok("an injected C_Sign failure ended the real operation (next C_Sign: not initialized)");
    EXPECT_RV(sign_init(h, priv), CKR_OK);                       /* SignInit 3 */
    ok("C_SignInit after the injected C_Sign failure succeeds (no CKR_OPERATION_ACTIVE)");
    len = 1000;
    EXPECT_RV(F->C_Sign(h, digest, sizeof digest, sig, &len), CKR_BUFFER_TOO_SMALL); /* 4 */
    EXPECT(len == 64, "CKR_BUFFER_TOO_SMALL left length %lu", (unsigned long)len);
    EXPECT_RV(F->C_Sign(h, digest, sizeof digest, sig, &len), CKR_OK); /* Sign 5 */
    verify(h, pub, sig, len);
    ok("an injected CKR_BUFFER_TOO_SMALL keeps the operation and reports the real length");
    EXPECT_RV(sign_init(h, priv), CKR_FUNCTION_FAILED);          /* SignInit 4 */
    EXPECT_RV(sign(h, sig, &len), CKR_OPERATION_NOT_INITIALIZED); /* Sign 6 */
    EXPECT_RV(sign_init(h, priv), CKR_OK);                       /* SignInit 5 */
    EXPECT_RV(sign(h, sig, &len), CKR_OK);                       /* Sign 7 */
    verify(h, pub, sig, len);
    ok("an injected C_SignInit failure started no operation");

    /* Multi-part operations, with an HMAC session key and SHA-256. */
    CK_OBJECT_HANDLE mac = hmac_key(h);
    CK_MECHANISM hm = { CKM_SHA256_HMAC, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 };
    CK_BYTE tag[32], md[32];
    CK_ULONG taglen, mdlen;
    EXPECT_RV(F->C_SignInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_SignUpdate(h, digest, sizeof digest), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_SignInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_SignUpdate(h, digest, sizeof digest), CKR_OK);
    taglen = sizeof tag;
    EXPECT_RV(F->C_SignFinal(h, tag, &taglen), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_SignFinal(h, tag, &taglen), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT_RV(F->C_SignInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_SignUpdate(h, digest, sizeof digest), CKR_OK);
    taglen = sizeof tag;
    EXPECT_RV(F->C_SignFinal(h, tag, &taglen), CKR_OK);
    EXPECT(taglen == 32, "HMAC length %lu", (unsigned long)taglen);
    ok("injected C_SignUpdate/C_SignFinal failures ended the multi-part operation");
    EXPECT_RV(F->C_VerifyInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_VerifyUpdate(h, digest, sizeof digest), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_VerifyInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_VerifyUpdate(h, digest, sizeof digest), CKR_OK);
    EXPECT_RV(F->C_VerifyFinal(h, tag, taglen), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_VerifyFinal(h, tag, taglen), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT_RV(F->C_VerifyInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_VerifyUpdate(h, digest, sizeof digest), CKR_OK);
    EXPECT_RV(F->C_VerifyFinal(h, tag, taglen), CKR_OK);
    ok("injected C_VerifyUpdate/C_VerifyFinal failures ended the verification");
    EXPECT_RV(F->C_DigestInit(h, &sha), CKR_OK);
    EXPECT_RV(F->C_DigestUpdate(h, digest, sizeof digest), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_DigestInit(h, &sha), CKR_OK);
    mdlen = sizeof md;
    EXPECT_RV(F->C_Digest(h, digest, sizeof digest, md, &mdlen), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_DigestInit(h, &sha), CKR_OK);
    mdlen = sizeof md;
    EXPECT_RV(F->C_Digest(h, digest, sizeof digest, md, &mdlen), CKR_OK);
    ok("injected C_DigestUpdate/C_Digest failures ended the digest");
    EXPECT(stat_now("injected.C_Sign") == 2 && stat_now("injected.C_SignInit") == 1 &&
           stat_now("injected_total") == 9, "injected counts");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULTS");
}

/* @N, @N+, *K, %P, the seed, no-trigger rules. */
static void scenario_triggers(void)
{
    setenv("JWKE_FAULTS",
           "C_GenerateRandom:CKR_DEVICE_ERROR@3*2;C_GenerateRandom:CKR_GENERAL_ERROR@8+;"
           "C_SeedRandom:0x6", 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SESSION_HANDLE h = open_session(find_slot());
    CK_BYTE buf[16];
    const CK_RV want[10] = { CKR_OK, CKR_OK, CKR_DEVICE_ERROR, CKR_DEVICE_ERROR, CKR_OK,
                             CKR_OK, CKR_OK, CKR_GENERAL_ERROR, CKR_GENERAL_ERROR,
                             CKR_GENERAL_ERROR };
    for (int i = 0; i < 10; i++)
        EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), want[i]);
    EXPECT_RV(F->C_SeedRandom(h, buf, sizeof buf), CKR_FUNCTION_FAILED);
    EXPECT_RV(F->C_SeedRandom(h, buf, sizeof buf), CKR_FUNCTION_FAILED);
    ok("@3*2 failed calls 3 and 4, @8+ every call from 8, a rule without trigger every call");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);

    /* %P: about P percent, the same sequence for the same seed. */
    static unsigned char seq[3][2000];
    const char *seeds[3] = { "42", "42", "7" };
    for (int run = 0; run < 3; run++) {
        setenv("JWKE_FAULTS", "C_GetInfo:CKR_FUNCTION_FAILED%25", 1);
        setenv("JWKE_FAULT_SEED", seeds[run], 1);
        EXPECT_RV(initialize(), CKR_OK);
        long injected_before = stat_now("injected.C_GetInfo"); /* per process */
        int failed = 0;
        for (int i = 0; i < 2000; i++) {
            CK_INFO info;
            CK_RV rv = F->C_GetInfo(&info);
            EXPECT(rv == CKR_OK || rv == CKR_FUNCTION_FAILED, "C_GetInfo: %s", rvname(rv));
            seq[run][i] = rv != CKR_OK;
            failed += rv != CKR_OK;
        }
        EXPECT(failed > 400 && failed < 600, "%%25 failed %d of 2000 calls", failed);
        EXPECT(stat_now("injected.C_GetInfo") - injected_before == failed, "injected.C_GetInfo");
        EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
        if (run == 0)
            ok("%%25 failed %d of 2000 calls", failed);
    }
    EXPECT(memcmp(seq[0], seq[1], sizeof seq[0]) == 0, "same seed, different sequence");
    EXPECT(memcmp(seq[0], seq[2], sizeof seq[0]) != 0, "different seeds, same sequence");
    ok("the same JWKE_FAULT_SEED gives the same sequence, another seed another one");

    setenv("JWKE_FAULTS", "C_GetInfo:CKR_FUNCTION_FAILED%10*3", 1);
    EXPECT_RV(initialize(), CKR_OK);
    int run = 0, runs = 0;
    for (int i = 0; i < 3000; i++) {
        CK_INFO info;
        if (F->C_GetInfo(&info) != CKR_OK) {
            run++;
        } else if (run) {
            EXPECT(run % 3 == 0, "a %%10*3 burst of %d calls", run);
            runs++;
            run = 0;
        }
    }
    EXPECT(runs > 30, "only %d bursts", runs);
    ok("%%10*3 fails in bursts of 3 (%d bursts)", runs);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULTS");
    unsetenv("JWKE_FAULT_SEED");
}

static CK_STATE session_state(CK_SESSION_HANDLE h)
{
    CK_SESSION_INFO info;
    EXPECT_RV(F->C_GetSessionInfo(h, &info), CKR_OK);
    return info.state;
}

/* Token removal and re-insertion through the control file. */
static void scenario_removal(void)
{
    const char *control = tmp_path("removal.control");
    unlink(control);
    setenv("JWKE_FAULT_CONTROL", control, 1);
    setenv("JWKE_FAULT_STATS", tmp_path("removal.stats"), 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_OBJECT_HANDLE priv, pub;
    CK_SESSION_HANDLE h = key_session(slot, &priv, &pub);
    sign_verify(h, priv, pub);
    CK_ULONG present_before = 0;
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, NULL, &present_before), CKR_OK);
    EXPECT_RV(sign_init(h, priv), CKR_OK); /* an operation active at removal */

    write_control(control, "# the token is pulled\nremoved=1\n");
    CK_ULONG n = 99;
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    EXPECT(n == 0, "%lu slots with a token while removed", (unsigned long)n);
    EXPECT_RV(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    EXPECT(n >= 1, "no slots while removed");
    CK_SLOT_INFO si;
    EXPECT_RV(F->C_GetSlotInfo(slot, &si), CKR_OK);
    EXPECT(!(si.flags & CKF_TOKEN_PRESENT), "CKF_TOKEN_PRESENT while removed");
    CK_TOKEN_INFO ti;
    EXPECT_RV(F->C_GetTokenInfo(slot, &ti), CKR_TOKEN_NOT_PRESENT);
    EXPECT_RV(F->C_GetTokenInfo(0xdead, &ti), CKR_SLOT_ID_INVALID);
    CK_SESSION_HANDLE h2;
    EXPECT_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2), CKR_TOKEN_NOT_PRESENT);
    CK_BYTE sig[64];
    CK_ULONG len;
    EXPECT_RV(sign(h, sig, &len), CKR_DEVICE_REMOVED);
    EXPECT_RV(sign_init(h, priv), CKR_DEVICE_REMOVED);
    EXPECT_RV(F->C_GetSessionInfo(h, NULL), CKR_DEVICE_REMOVED);
    EXPECT_RV(F->C_GetSessionInfo(h + 1000, NULL), CKR_SESSION_HANDLE_INVALID);
    ok("removed: no token in any slot, CKR_TOKEN_NOT_PRESENT, old session CKR_DEVICE_REMOVED");

    write_control(control, "removed=0\n");
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    EXPECT(n == present_before, "%lu slots with a token after re-insertion", (unsigned long)n);
    EXPECT_RV(F->C_GetTokenInfo(slot, &ti), CKR_OK);
    EXPECT_RV(sign_init(h, priv), CKR_SESSION_HANDLE_INVALID);
    EXPECT_RV(F->C_GetSessionInfo(h, NULL), CKR_SESSION_HANDLE_INVALID);
    EXPECT_RV(F->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID);
    ok("re-inserted: the old session handle is CKR_SESSION_HANDLE_INVALID");
    h2 = open_session(slot);
    EXPECT(h2 != h, "a new session reuses the old handle");
    CK_STATE state = session_state(h2);
    EXPECT(state == CKS_RW_PUBLIC_SESSION, "new session state %lu: still logged in",
           (unsigned long)state);
    CK_RV rv = sign_init(h2, priv);
    EXPECT(rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID ||
           rv == CKR_USER_NOT_LOGGED_IN, "C_SignInit with the old key handle: %s", rvname(rv));
    ok("the re-inserted token is logged out; C_SignInit with the old key handle: %s",
       rvname(rv));
    login(h2);
    key_pair(h2, &priv, &pub);
    sign_verify(h2, priv, pub);
    ok("log in, find the key again, sign: works");
    char *text = read_file(tmp_path("removal.stats"));
    EXPECT(text && strstr(text, "reason reload\n") && stat_in(text, "removals") == 1,
           "reload stats: %s", text ? text : "(none)");
    EXPECT(stat_now("removals") == 1 && stat_now("insertions") == 1 && stat_now("reloads") == 2,
           "removal counts");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULT_CONTROL");
    unsetenv("JWKE_FAULT_STATS");

    setenv("JWKE_FAULT_REMOVED", "1", 1);
    EXPECT_RV(initialize(), CKR_OK);
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    EXPECT(n == 0, "JWKE_FAULT_REMOVED=1: %lu slots with a token", (unsigned long)n);
    EXPECT_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2), CKR_TOKEN_NOT_PRESENT);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULT_REMOVED");
    ok("JWKE_FAULT_REMOVED=1 removes the token from C_Initialize on");
}

/* What the wrappers' shared bodies (SESSION_BASE, SLOT_BASE, fm_output_call
 * in fm_call.h) must keep, where no other scenario looks: an injected
 * CKR_BUFFER_TOO_SMALL on a final call keeps the operation and reports the
 * real length, another fault on a final call ends it without writing the
 * caller's buffer; while the token is removed, the slot calls that need it
 * answer the removal before a fault and the others the fault; an injected
 * C_Finalize failure leaves the module initialized. */
static void scenario_paths(void)
{
    const char *control = tmp_path("paths.control");
    write_control(control, "faults=C_SignFinal:CKR_BUFFER_TOO_SMALL@2;"
                           "C_DigestFinal:CKR_DEVICE_ERROR@1\n");
    setenv("JWKE_FAULT_CONTROL", control, 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_OBJECT_HANDLE priv, pub;
    CK_SESSION_HANDLE h = key_session(slot, &priv, &pub);
    CK_OBJECT_HANDLE mac = hmac_key(h);
    CK_MECHANISM hm = { CKM_SHA256_HMAC, NULL, 0 }, sha = { CKM_SHA256, NULL, 0 };
    CK_BYTE want[32], tag[32], md[32], md_single[32], untouched[32];
    CK_ULONG len;

    EXPECT_RV(F->C_SignInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_SignUpdate(h, digest, sizeof digest), CKR_OK);
    len = sizeof want;
    EXPECT_RV(F->C_SignFinal(h, want, &len), CKR_OK); /* SignFinal 1: the tag, unfaulted */
    EXPECT_RV(F->C_SignInit(h, &hm, mac), CKR_OK);
    EXPECT_RV(F->C_SignUpdate(h, digest, sizeof digest), CKR_OK);
    len = 1000;
    EXPECT_RV(F->C_SignFinal(h, tag, &len), CKR_BUFFER_TOO_SMALL); /* SignFinal 2 */
    EXPECT(len == sizeof want, "an injected C_SignFinal CKR_BUFFER_TOO_SMALL left length %lu",
           (unsigned long)len);
    EXPECT_RV(F->C_SignFinal(h, tag, &len), CKR_OK); /* SignFinal 3: the same operation */
    EXPECT(len == sizeof want && memcmp(tag, want, sizeof want) == 0,
           "the kept C_SignFinal operation gave another tag");
    ok("an injected C_SignFinal CKR_BUFFER_TOO_SMALL keeps the operation and reports the "
       "real length");

    EXPECT_RV(F->C_DigestInit(h, &sha), CKR_OK);
    len = sizeof md_single;
    EXPECT_RV(F->C_Digest(h, digest, sizeof digest, md_single, &len), CKR_OK);
    EXPECT_RV(F->C_DigestInit(h, &sha), CKR_OK);
    EXPECT_RV(F->C_DigestUpdate(h, digest, sizeof digest), CKR_OK);
    memset(md, 0xa5, sizeof md);
    memcpy(untouched, md, sizeof md);
    len = sizeof md;
    EXPECT_RV(F->C_DigestFinal(h, md, &len), CKR_DEVICE_ERROR); /* DigestFinal 1 */
    EXPECT(memcmp(md, untouched, sizeof md) == 0, "the failed C_DigestFinal wrote the buffer");
    EXPECT_RV(F->C_DigestFinal(h, md, &len), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT_RV(F->C_DigestInit(h, &sha), CKR_OK);
    EXPECT_RV(F->C_DigestUpdate(h, digest, sizeof digest), CKR_OK);
    len = sizeof md;
    EXPECT_RV(F->C_DigestFinal(h, md, &len), CKR_OK);
    EXPECT(len == sizeof md_single && memcmp(md, md_single, sizeof md) == 0,
           "multi-part and single-part SHA-256 differ");
    ok("an injected C_DigestFinal failure ended the digest and left the caller's buffer alone");

    write_control(control, "removed=1\n"
                           "faults=C_GetSlotList:CKR_DEVICE_ERROR;C_GetSlotInfo:CKR_DEVICE_ERROR;"
                           "C_GetTokenInfo:CKR_DEVICE_ERROR;C_GetMechanismList:CKR_DEVICE_ERROR;"
                           "C_CloseAllSessions:CKR_DEVICE_ERROR\n");
    CK_ULONG n = 0;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    EXPECT_RV(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_GetSlotInfo(slot, &si), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_GetTokenInfo(slot, &ti), CKR_TOKEN_NOT_PRESENT);
    EXPECT_RV(F->C_GetMechanismList(slot, NULL, &n), CKR_TOKEN_NOT_PRESENT);
    EXPECT_RV(F->C_CloseAllSessions(slot), CKR_OK);
    EXPECT_RV(F->C_CloseAllSessions(0xdead), CKR_SLOT_ID_INVALID);
    EXPECT(stat_now("injected.C_GetSlotList") == 1 && stat_now("injected.C_GetSlotInfo") == 1 &&
           stat_now("injected.C_GetTokenInfo") == 0 &&
           stat_now("injected.C_GetMechanismList") == 0 &&
           stat_now("injected.C_CloseAllSessions") == 0,
           "injected counts while removed");
    ok("removed: C_GetSlotList/C_GetSlotInfo give the fault, C_GetTokenInfo/C_GetMechanismList/"
       "C_CloseAllSessions the removal");

    write_control(control, "faults=C_Finalize:CKR_DEVICE_ERROR@1\n");
    CK_INFO info;
    EXPECT_RV(F->C_Finalize(NULL), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    EXPECT(stat_now("injected.C_Finalize") == 1, "injected.C_Finalize");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    ok("an injected C_Finalize failure left the module initialized; the next one finalized");
    unsetenv("JWKE_FAULT_CONTROL");
}

/* Side effects of CKR_SESSION_HANDLE_INVALID and CKR_USER_NOT_LOGGED_IN. */
static void scenario_effects(void)
{
    setenv("JWKE_FAULTS",
           "C_Sign:CKR_SESSION_HANDLE_INVALID@1;C_Sign:CKR_SESSION_CLOSED@2~;"
           "C_SignInit:CKR_USER_NOT_LOGGED_IN@4;C_SignInit:CKR_USER_NOT_LOGGED_IN@6~", 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_OBJECT_HANDLE priv, pub;
    key_session(slot, &priv, &pub); /* a session that holds the login */
    CK_SESSION_HANDLE h = open_session(slot);
    CK_BYTE sig[64];
    CK_ULONG len;

    EXPECT_RV(sign_init(h, priv), CKR_OK);                      /* SignInit 1 */
    EXPECT_RV(sign(h, sig, &len), CKR_SESSION_HANDLE_INVALID);  /* Sign 1 */
    EXPECT_RV(sign_init(h, priv), CKR_SESSION_HANDLE_INVALID);  /* SignInit 2 */
    EXPECT_RV(F->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID);
    ok("an injected CKR_SESSION_HANDLE_INVALID closes the session for good");
    h = open_session(slot);
    EXPECT_RV(sign_init(h, priv), CKR_OK);                      /* SignInit 3 */
    EXPECT_RV(sign(h, sig, &len), CKR_SESSION_CLOSED);          /* Sign 2, transient */
    EXPECT_RV(sign_init(h, priv), CKR_USER_NOT_LOGGED_IN);      /* SignInit 4 */
    ok("a transient (~) CKR_SESSION_CLOSED leaves the session usable");
    EXPECT(session_state(h) == CKS_RW_PUBLIC_SESSION, "still logged in after an injected "
           "CKR_USER_NOT_LOGGED_IN");
    CK_RV rv = sign_init(h, priv);                              /* SignInit 5: real answer */
    EXPECT(rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_OBJECT_HANDLE_INVALID ||
           rv == CKR_KEY_HANDLE_INVALID, "after the logout C_SignInit returned %s", rvname(rv));
    ok("an injected CKR_USER_NOT_LOGGED_IN logs the token out; the next C_SignInit with the "
       "old private key handle: %s", rvname(rv));
    login(h);
    rv = sign_init(h, priv);                                    /* SignInit 6, transient */
    EXPECT_RV(rv, CKR_USER_NOT_LOGGED_IN);
    EXPECT(session_state(h) == CKS_RW_USER_FUNCTIONS, "logged out by a transient fault");
    ok("a transient (~) CKR_USER_NOT_LOGGED_IN keeps the login");
    rv = sign_init(h, priv);                                    /* SignInit 7 */
    if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) {
        ok("after logging in again the old private key handle is %s: find the key again",
           rvname(rv));
        key_pair(h, &priv, &pub);
        rv = sign_init(h, priv);
    } else {
        ok("after logging in again the old private key handle still works");
    }
    EXPECT_RV(rv, CKR_OK);
    EXPECT_RV(sign(h, sig, &len), CKR_OK);
    verify(h, pub, sig, len);
    ok("signing works again");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULTS");
}

static void scenario_max_sessions(void)
{
    setenv("JWKE_FAULT_MAX_SESSIONS", "3", 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_SESSION_HANDLE h[3], extra;
    for (int i = 0; i < 3; i++)
        h[i] = open_session(slot);
    EXPECT_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &extra), CKR_SESSION_COUNT);
    EXPECT_RV(F->C_CloseSession(h[1]), CKR_OK);
    h[1] = open_session(slot);
    EXPECT_RV(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &extra), CKR_SESSION_COUNT);
    EXPECT_RV(F->C_CloseAllSessions(slot), CKR_OK);
    for (int i = 0; i < 3; i++)
        h[i] = open_session(slot);
    ok("JWKE_FAULT_MAX_SESSIONS=3: the 4th session gets CKR_SESSION_COUNT");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULT_MAX_SESSIONS");
}

static void scenario_latency(void)
{
    const char *control = tmp_path("latency.control");
    unlink(control);
    /* Lower bounds hold on any machine; the one upper bound ("without
     * latency") allows five calls the time of one added delay, a margin a
     * loaded machine keeps for five calls that take microseconds. */
    setenv("JWKE_FAULT_LATENCY_US", "C_GetInfo:250000", 1);
    setenv("JWKE_FAULT_CONTROL", control, 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_INFO info;
    double t0 = now_ms();
    for (int i = 0; i < 5; i++)
        EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    double slow = now_ms() - t0;
    EXPECT(slow >= 1250.0, "5 calls with 250 ms latency took %.1f ms", slow);
    write_control(control, "latency=C_GetInfo:0\n");
    t0 = now_ms();
    for (int i = 0; i < 5; i++)
        EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    double fast = now_ms() - t0;
    EXPECT(fast < 250.0, "5 calls without latency took %.1f ms (one delay is 250 ms)", fast);
    write_control(control, "latency=*:10000\n");
    t0 = now_ms();
    CK_ULONG n;
    EXPECT_RV(F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    double all = now_ms() - t0;
    EXPECT(all >= 20.0, "*:10000 on two calls took %.1f ms", all);
    ok("latency: 5 x 250 ms took %.1f ms, without %.1f ms, *:10000 x 2 took %.1f ms", slow, fast,
       all);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULT_LATENCY_US");
    unsetenv("JWKE_FAULT_CONTROL");
}

/* Reloads, their effect on counts, bad files, env + file, the interval. */
static void scenario_control(void)
{
    const char *control = tmp_path("control.control");
    const char *stats = tmp_path("control.stats");
    unlink(control);
    unlink(stats);
    setenv("JWKE_FAULTS", "C_GetInfo:CKR_DEVICE_ERROR", 1);
    setenv("JWKE_FAULT_CONTROL", control, 1);
    setenv("JWKE_FAULT_STATS", stats, 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SESSION_HANDLE h = open_session(find_slot());
    CK_BYTE buf[8];
    CK_INFO info;
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_DEVICE_ERROR);

    write_control(control, "seed=5\n");
    EXPECT_RV(F->C_GetInfo(&info), CKR_DEVICE_ERROR);
    ok("keys absent from the control file keep the environment's value");
    char *text = read_file(stats);
    EXPECT(text && strstr(text, "reason reload\n") &&
           stat_in(text, "window.C_GenerateRandom") == 2, "reload stats: %s", text ? text : "-");
    ok("a reload writes the stats of the window it ends");

    write_control(control, "faults=C_GenerateRandom:CKR_DEVICE_ERROR@2\n");
    EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    write_control(control, "faults=C_GenerateRandom:CKR_DEVICE_ERROR@2\n");
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_DEVICE_ERROR);
    ok("faults= replaces the environment's rules; each reload restarts the counts");

    write_control(control, "faults=C_Nope:CKR_DEVICE_ERROR\n");
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    EXPECT(stat_now("control_errors") == 1, "control_errors %ld", stat_now("control_errors"));
    EXPECT(stat_now("window.C_GenerateRandom") == 3, "a bad file restarted the counts");
    ok("a control file that does not parse is ignored (previous settings stay)");

    write_control(control, "faults=C_GenerateRandom:CKR_DEVICE_ERROR@1+\n"
                           "faults=C_GetInfo:CKR_GENERAL_ERROR\n");
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_DEVICE_ERROR);
    EXPECT_RV(F->C_GetInfo(&info), CKR_GENERAL_ERROR);
    unlink(control);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_DEVICE_ERROR);
    ok("repeated faults= lines add up; removing the file goes back to the environment");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);

    write_control(control, "faults=C_Bad\n");
    EXPECT_RV(initialize(), CKR_GENERAL_ERROR);
    ok("a bad control file at C_Initialize fails C_Initialize");

    unsetenv("JWKE_FAULTS");
    write_control(control, "faults=\n");
    setenv("JWKE_FAULT_CONTROL_INTERVAL_MS", "300", 1);
    /* The module last looks at the file during C_Initialize or this
     * C_GetInfo, both after `checked`, so the change cannot be seen before
     * `checked + 300 ms`: poll until it is, and check that lower bound (a
     * slow machine only makes it later). Taken before C_Initialize: its own
     * look starts the interval. */
    double checked = now_ms();
    EXPECT_RV(initialize(), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_OK);
    write_control(control, "faults=C_GetInfo:CKR_DEVICE_ERROR\n");
    CK_RV rv;
    while ((rv = F->C_GetInfo(&info)) == CKR_OK && now_ms() - checked < 30000.0)
        usleep(20 * 1000);
    double seen = now_ms() - checked;
    EXPECT(rv == CKR_DEVICE_ERROR, "the change was not seen within 30 s (%s)", rvname(rv));
    EXPECT(seen >= 300.0, "the change was seen after %.1f ms, within the 300 ms interval", seen);
    ok("JWKE_FAULT_CONTROL_INTERVAL_MS=300: the change is seen after %.1f ms, not before", seen);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULT_CONTROL_INTERVAL_MS");
    unsetenv("JWKE_FAULT_CONTROL");
    unsetenv("JWKE_FAULT_STATS");
}

/* Threads signing through random faults. */
#define THREADS 8
#define SIGNATURES 300

struct worker {
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE priv, pub;
    long faults, bad;
    char why[200];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE h = 0;
    if (F->C_OpenSession(w->slot, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK) {
        w->bad++;
        snprintf(w->why, sizeof w->why, "C_OpenSession failed");
        return NULL;
    }
    for (int i = 0; i < SIGNATURES; i++) {
        for (;;) {
            CK_BYTE sig[64];
            CK_ULONG len = sizeof sig;
            CK_RV rv = F->C_SignInit(h, &ecdsa, w->priv);
            if (rv == CKR_OK) {
                rv = F->C_Sign(h, digest, sizeof digest, sig, &len);
                if (rv == CKR_OK) {
                    if (F->C_VerifyInit(h, &ecdsa, w->pub) != CKR_OK ||
                        F->C_Verify(h, digest, sizeof digest, sig, len) != CKR_OK) {
                        w->bad++;
                        snprintf(w->why, sizeof w->why, "a signature does not verify");
                    }
                    break;
                }
            }
            if (rv == CKR_DEVICE_ERROR) {
                w->faults++;
                continue;
            }
            w->bad++;
            snprintf(w->why, sizeof w->why, "unexpected %s", rvname(rv));
            break;
        }
    }
    F->C_CloseSession(h);
    return NULL;
}

static void scenario_threads(void)
{
    setenv("JWKE_FAULTS", "C_Sign:CKR_DEVICE_ERROR%3;C_SignInit:CKR_DEVICE_ERROR%3", 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_OBJECT_HANDLE priv, pub;
    key_session(slot, &priv, &pub); /* a session that holds the login */
    struct worker w[THREADS];
    pthread_t t[THREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < THREADS; i++) {
        w[i].slot = slot;
        w[i].priv = priv;
        w[i].pub = pub;
        EXPECT(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0, "pthread_create");
    }
    long faults = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        EXPECT(w[i].bad == 0, "thread %d: %s", i, w[i].why);
        faults += w[i].faults;
    }
    long injected = stat_now("injected_total");
    EXPECT(injected == faults, "threads saw %ld faults, the module injected %ld", faults, injected);
    EXPECT(stat_now("calls.C_Sign") == THREADS * SIGNATURES + stat_now("injected.C_Sign"),
           "calls.C_Sign %ld", stat_now("calls.C_Sign"));
    EXPECT(faults > 0, "no faults injected");
    ok("%d threads signed %d times each through %ld injected faults; every signature verifies",
       THREADS, SIGNATURES, faults);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULTS");
}

static volatile int spinning = 1;

static void *spinner(void *arg)
{
    (void)arg;
    while (spinning) {
        CK_INFO info;
        F->C_GetInfo(&info);
    }
    return NULL;
}

static void scenario_fork(void)
{
    setenv("JWKE_FAULTS", "C_GenerateRandom:CKR_DEVICE_ERROR@2", 1);
    setenv("JWKE_FAULT_STATS", tmp_path("fork-%p.stats"), 1);
    EXPECT_RV(initialize(), CKR_OK);
    CK_SLOT_ID slot = find_slot();
    CK_SESSION_HANDLE h = open_session(slot);
    CK_BYTE buf[8];
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_OK);

    fflush(stdout);
    pid_t pid = fork();
    EXPECT(pid >= 0, "fork");
    if (pid == 0) {
        CK_RV rv = initialize();
        if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
            fail("child: C_Initialize %s", rvname(rv));
        CK_SESSION_HANDLE c = open_session(slot);
        EXPECT_RV(F->C_GenerateRandom(c, buf, sizeof buf), CKR_OK);
        EXPECT_RV(F->C_GenerateRandom(c, buf, sizeof buf), CKR_DEVICE_ERROR);
        EXPECT(stat_now("calls.C_GenerateRandom") == 2, "child counts");
        printf("ok child: C_Initialize %s, fresh counts, same faults\n", rvname(rv));
        fflush(stdout);
        EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
        _exit(0);
    }
    int status = 0;
    EXPECT(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "the child failed");
    char name[64];
    snprintf(name, sizeof name, "fork-%ld.stats", (long)pid);
    char *text = read_file(tmp_path(name));
    EXPECT(text && stat_in(text, "calls.C_GenerateRandom") == 2 &&
           stat_in(text, "injected.C_GenerateRandom") == 1, "child stats %s", name);
    EXPECT_RV(F->C_GenerateRandom(h, buf, sizeof buf), CKR_DEVICE_ERROR);
    ok("parent: its own count goes on (2nd call fails); child stats in %s", name);

    /* Fork while another thread is inside the module, many times. */
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, spinner, NULL) == 0, "pthread_create");
    for (int i = 0; i < 20; i++) {
        pid = fork();
        EXPECT(pid >= 0, "fork");
        if (pid == 0) {
            alarm(10);
            CK_INFO info;
            CK_RV rv = initialize();
            _exit((rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) &&
                          F->C_GetInfo(&info) == CKR_OK ? 0 : 1);
        }
        EXPECT(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "child %d hung or failed (status %d)", i, status);
    }
    spinning = 0;
    pthread_join(t, NULL);
    ok("20 forks while another thread calls the module: no child hangs");
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    unsetenv("JWKE_FAULTS");
    unsetenv("JWKE_FAULT_STATS");
}

/* The real module also loaded directly: the wrapper must not finalize it. */
static void scenario_shared(void)
{
    void *direct = dlopen("/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    EXPECT(direct, "dlopen SoftHSM: %s", dlerror());
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(direct, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR D = NULL;
    EXPECT(get && get(&D) == CKR_OK, "SoftHSM's function list");
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    EXPECT_RV(D->C_Initialize(&args), CKR_OK);
    CK_SESSION_HANDLE dh;
    CK_SLOT_ID slot;
    setenv("JWKE_FAULT_MODULE", "/usr/lib/softhsm/libsofthsm2.so", 1);
    EXPECT_RV(initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    slot = find_slot();
    EXPECT_RV(D->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &dh), CKR_OK);
    CK_SESSION_HANDLE h = open_session(slot);
    CK_INFO info;
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    EXPECT_RV(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT_RV(D->C_GetInfo(&info), CKR_OK);
    CK_SESSION_INFO si;
    EXPECT_RV(D->C_GetSessionInfo(dh, &si), CKR_OK);
    EXPECT_RV(D->C_CloseSession(dh + 1), CKR_SESSION_HANDLE_INVALID); /* the wrapper's, closed */
    ok("C_Finalize through the wrapper closed its own sessions and left the directly loaded "
       "SoftHSM initialized");
    EXPECT_RV(initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    EXPECT_RV(F->C_GetSessionInfo(h, &si), CKR_SESSION_HANDLE_INVALID);
    EXPECT_RV(F->C_Finalize(NULL), CKR_OK);
    EXPECT_RV(D->C_Finalize(NULL), CKR_OK);
    ok("wrapper sessions from before its C_Finalize are invalid after the next C_Initialize");
    unsetenv("JWKE_FAULT_MODULE");
    dlclose(direct);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODULE TOKEN_LABEL PIN TMPDIR SCENARIO\n"
                "scenarios: list counts sign-faults triggers removal effects max-sessions "
                "latency control threads fork shared paths\n", argv[0]);
        return 2;
    }
    module_path = argv[1];
    token_label = argv[2];
    pin = argv[3];
    tmpdir = argv[4];
    const char *scenario = argv[5];
    setvbuf(stdout, NULL, _IOLBF, 0);
    clear_env();
    load();
    static const struct {
        const char *name;
        void (*run)(void);
    } scenarios[] = {
        { "list", scenario_list },           { "counts", scenario_counts },
        { "sign-faults", scenario_sign_faults }, { "triggers", scenario_triggers },
        { "removal", scenario_removal },     { "effects", scenario_effects },
        { "max-sessions", scenario_max_sessions }, { "latency", scenario_latency },
        { "control", scenario_control },     { "threads", scenario_threads },
        { "fork", scenario_fork },          { "shared", scenario_shared },
        { "paths", scenario_paths },
    };
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        if (strcmp(scenarios[i].name, scenario) == 0) {
            scenarios[i].run();
            printf("PASS %s\n", scenario);
            return 0;
        }
    }
    fprintf(stderr, "unknown scenario '%s'\n", scenario);
    return 2;
}
