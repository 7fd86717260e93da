/*
 * jwke_faultmod: a fault-injecting PKCS#11 module for jwkengine's tests.
 *
 * libjwke_faultmod.so is a complete PKCS#11 v2.40 module. C_GetFunctionList
 * hands out a CK_FUNCTION_LIST with every slot filled; each function forwards
 * to a real module (SoftHSM by default) loaded with dlopen, after counting the
 * call and, when configured, adding latency, simulating token removal or
 * returning an injected CKR_ code. spec/faultmod/README.md is the user's
 * guide; this comment is the reference, and the README's map says which
 * fm_*.c file holds each part.
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
#include <p11-kit/pkcs11.h>

#include "fm_functions.h"
#include "fm_lock.h"
#include "fm_stats.h"
#include "fm_wrappers.h"

/* Every slot filled, from the one table of functions. */
static CK_FUNCTION_LIST function_list = {
    .version = { 2, 40 },
#define FM_SLOT(name) .name = w_##name,
    FM_FUNCTIONS(FM_SLOT)
#undef FM_SLOT
};

/* The module's entry point; counted (it never fails by a rule). */
FM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    fm_lock();
    fm_stats_call_locked(FN_C_GetFunctionList);
    fm_unlock();
    if (!ppFunctionList)
        return CKR_ARGUMENTS_BAD;
    *ppFunctionList = &function_list;
    return CKR_OK;
}

/* jwke_faultmod_stats, the other exported symbol, is fm_stats.c's. */
