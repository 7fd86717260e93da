/* One call through the module (see fm_call.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* explicit_bzero */
#endif
#include "fm_call.h"

#include "ckr_names.h" /* the core's one table of CKR_ names */
#include "fm_control.h"
#include "fm_latency.h"
#include "fm_lock.h"
#include "fm_process.h"
#include "fm_real.h"
#include "fm_rules.h"
#include "fm_sessions.h"
#include "fm_settings.h"
#include "fm_stats.h"

#include <stdlib.h>
#include <string.h>

CK_RV fm_enter(int fn, fm_call *c)
{
    memset(c, 0, sizeof *c);
    c->fn = fn;
    fm_lock();
    int initialized = fm_real_initialized_locked() && !fm_process_child_uninitialized_locked();
    fm_config *cfg = fm_settings_locked(); /* a reload replaces what it points to */
    if (initialized) {
        fm_control_maybe_reload_locked();
        if (!cfg->removed)
            fm_sessions_expire_idle_locked(cfg->session_idle_ms, fm_real_list_locked());
    }
    c->number = fm_stats_call_locked(fn);
    c->R = fm_real_list_locked();
    c->removed = cfg->removed;
    c->sync = fm_stats_sync_locked();
    unsigned long latency = 0;
    if (initialized) {
        fm_rules_decide_locked(cfg->rules, cfg->nrules, fn, c->number, &c->fault, &c->transient);
        latency = cfg->latency_us[fn];
        for (size_t i = 0; i < cfg->nlengths && c->nlengths < FM_MAX_LENGTHS_PER_CALL; i++)
            if (cfg->lengths[i].fn == fn)
                c->lengths[c->nlengths++] = cfg->lengths[i];
    }
    fm_unlock();
    if (latency)
        fm_sleep_us(latency);
    return initialized ? CKR_OK : CKR_CRYPTOKI_NOT_INITIALIZED;
}

CK_RV fm_finish(fm_call *c, CK_RV rv)
{
    if (rv != CKR_OK || c->sync) {
        fm_lock();
        if (rv != CKR_OK)
            fm_stats_error_locked(c->fn);
        if (c->sync && !(c->fn == FN_C_Finalize && rv == CKR_OK)) /* that one wrote already */
            fm_stats_write_locked("call");
        fm_unlock();
    }
    return rv;
}

/* The real handle behind a caller's session handle. */
static CK_RV session_real(CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real)
{
    CK_RV rv;
    fm_lock();
    if (fm_settings_locked()->removed)
        rv = fm_sessions_issued_locked(h) ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
    else /* one idle too long was closed by fm_enter(): the token forgot it */
        rv = fm_sessions_use_locked(h, real);
    fm_unlock();
    return rv;
}

CK_RV fm_enter_session(int fn, fm_call *c, CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real)
{
    CK_RV rv = fm_enter(fn, c);
    return rv == CKR_OK ? session_real(h, real) : rv;
}

void fm_forget_session(CK_SESSION_HANDLE h)
{
    fm_lock();
    fm_sessions_forget_locked(h);
    fm_unlock();
}

CK_RV fm_deliver(fm_call *c, int has_session, CK_SESSION_HANDLE h, CK_SESSION_HANDLE real)
{
    if (has_session && !c->transient) {
        if (c->fault == CKR_SESSION_HANDLE_INVALID || c->fault == CKR_SESSION_CLOSED) {
            c->R->C_CloseSession(real);
            fm_forget_session(h);
        } else if (c->fault == CKR_USER_NOT_LOGGED_IN && c->fn != FN_C_Login &&
                   c->fn != FN_C_Logout) {
            c->R->C_Logout(real);
        }
    }
    fm_lock();
    fm_stats_injected_locked(c->fn);
    if (fm_log_verbose()) {
        const char *name = jwke_ckr_name(c->fault);
        fm_log("%s call %lu: injecting %s (0x%lx)%s", fm_function_name(c->fn), c->number,
               name ? name : "vendor code", (unsigned long)c->fault, c->transient ? " ~" : "");
    }
    fm_unlock();
    return c->fault;
}

static CK_RV output_call(const fm_output_call *o, CK_SESSION_HANDLE real, CK_BYTE_PTR out,
                         CK_ULONG_PTR outlen)
{
    if (o->single)
        return o->single(real, o->in, o->inlen, out, outlen);
    return o->final(real, out, outlen);
}

void fm_fault_output(const fm_output_call *o, CK_SESSION_HANDLE real, int keep,
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

CK_RV fm_forward_output(fm_call *c, const fm_output_call *o, CK_SESSION_HANDLE real,
                        CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
    CK_ULONG buffer = outlen ? *outlen : 0;
    CK_RV rv = output_call(o, real, out, outlen);
    return fm_misreport_output(c, out != NULL, outlen, buffer, rv);
}

void fm_terminate_op(CK_FUNCTION_LIST_PTR R, CK_SESSION_HANDLE real, int op)
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
    fm_fault_output(&final, real, 0, NULL);
}
