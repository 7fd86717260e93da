/* The general-purpose functions: C_Initialize, C_Finalize, C_GetInfo,
 * C_GetFunctionList through the list, and the legacy parallel-function
 * calls. C_Initialize reads the settings and loads the real module; it is
 * the one wrapper that cannot use fm_enter, since the module is not
 * initialized yet when it is called. */
#include "fm_call.h"
#include "fm_control.h"
#include "fm_latency.h"
#include "fm_lock.h"
#include "fm_process.h"
#include "fm_real.h"
#include "fm_rules.h"
#include "fm_sessions.h"
#include "fm_settings.h"
#include "fm_stats.h"
#include "fm_wrappers.h"

#include <stdio.h>
#include <string.h>

/* A C_Initialize that cannot start: counted, reported, CKR_GENERAL_ERROR. */
static CK_RV initialize_failed_locked(const char *err)
{
    fm_stats_call_outside_window_locked(FN_C_Initialize);
    fm_stats_error_locked(FN_C_Initialize);
    fm_unlock();
    fprintf(stderr, "jwke_faultmod: %s\n", err);
    return CKR_GENERAL_ERROR;
}

CK_RV w_C_Initialize(CK_VOID_PTR pInitArgs)
{
    fm_call c;
    char err[512];
    memset(&c, 0, sizeof c);
    c.fn = FN_C_Initialize;

    fm_lock();
    if (fm_process_child_uninitialized_locked()) {
        /* A strict child initializing, as PKCS#11 asks of it: the real
         * module's state came along with the fork, so nothing is forwarded. */
        fm_process_child_initialized_locked();
        fm_stats_call_locked(FN_C_Initialize);
        fm_log("forked child initialized");
        fm_unlock();
        return CKR_OK;
    }
    if (!fm_real_initialized_locked()) {
        fm_config cfg;
        fm_fileid id;
        fm_settings_read_process_locked();
        if (fm_settings_build(&cfg, &id, err, sizeof err) != 0)
            return initialize_failed_locked(err);
        fm_control_remember_locked(&id);
        fm_settings_replace_locked(&cfg);
        if (fm_real_load_locked(err, sizeof err) != 0)
            return initialize_failed_locked(err);
    }
    fm_config *cfg = fm_settings_locked();
    c.number = fm_stats_call_locked(FN_C_Initialize);
    c.R = fm_real_list_locked();
    c.sync = fm_stats_sync_locked();
    fm_rules_decide_locked(cfg->rules, cfg->nrules, FN_C_Initialize, c.number, &c.fault,
                           &c.transient);
    unsigned long latency = cfg->latency_us[FN_C_Initialize];
    fm_unlock();
    if (latency)
        fm_sleep_us(latency);
    if (c.fault)
        return fm_finish(&c, fm_deliver(&c, 0, 0, 0));

    CK_RV rv = c.R->C_Initialize(pInitArgs);
    fm_lock();
    if (rv == CKR_OK) {
        /* Only the first initialization of a count window restarts it: a
         * caller that re-initializes to recover must not re-arm the very
         * faults it is recovering from. */
        fm_stats_initialized_locked();
        fm_sessions_drop_locked(1, 0, NULL); /* a fresh real module has no sessions */
    }
    if (rv == CKR_OK || (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && !fm_real_initialized_locked()))
        fm_real_set_initialized_locked(1, rv == CKR_OK);
    fm_unlock();
    return fm_finish(&c, rv);
}

/* C_Finalize forwarded: the real module finalized and unloaded. */
static CK_RV finalize_real(fm_call *c, CK_VOID_PTR pReserved)
{
    fm_lock();
    int owned = fm_real_owned_locked();
    fm_unlock();
    /* Finalize the real module only if we initialized it: when it was
     * already initialized (by another user of the same library in this
     * process, or inherited across fork), it is not ours to finalize. */
    CK_RV rv = owned ? c->R->C_Finalize(pReserved) : (pReserved ? CKR_ARGUMENTS_BAD : CKR_OK);
    if (rv == CKR_OK) {
        fm_lock();
        fm_real_set_initialized_locked(0, 0);
        /* Our sessions end with us; the real C_Finalize closed them already
         * when we owned the module. */
        fm_sessions_drop_locked(1, 0, owned ? NULL : fm_real_list_locked());
        fm_stats_write_locked("finalize");
        /* Unloaded here, loaded again by the next C_Initialize. */
        fm_real_unload_locked();
        fm_unlock();
    }
    return rv;
}

CK_RV w_C_Finalize(CK_VOID_PTR pReserved)
{
    SLOT_BASE(C_Finalize, 0, CKR_OK, finalize_real(&c, pReserved));
}

CK_RV w_C_GetInfo(CK_INFO_PTR pInfo)
{
    PLAIN_CALL(C_GetInfo, (pInfo));
}

CK_RV w_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    return C_GetFunctionList(ppFunctionList);
}

FM_SESSION_ONLY_WRAPPER(C_GetFunctionStatus)
FM_SESSION_ONLY_WRAPPER(C_CancelFunction)
