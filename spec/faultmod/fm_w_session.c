/* Session management and login. The wrapper gives out its own session
 * handles (fm_sessions.h): C_OpenSession maps a new one to the real
 * session, and the close calls forget it once the real module has. */
#include "fm_call.h"
#include "fm_wrappers.h"
#include "fm_lock.h"
#include "fm_real.h"
#include "fm_sessions.h"
#include "fm_settings.h"

CK_RV w_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
                      CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
    fm_call c;
    CK_RV rv = fm_enter(FN_C_OpenSession, &c);
    if (rv != CKR_OK)
        return fm_finish(&c, rv);
    if (c.removed)
        return fm_finish(&c, fm_token_absent(c.R, slotID));
    fm_lock();
    unsigned long max_sessions = fm_settings_locked()->max_sessions;
    int full = max_sessions && fm_sessions_count_locked() >= max_sessions;
    fm_unlock();
    if (full)
        return fm_finish(&c, CKR_SESSION_COUNT);
    if (c.fault)
        return fm_finish(&c, fm_deliver(&c, 0, 0, 0));
    if (!phSession)
        return fm_finish(&c, CKR_ARGUMENTS_BAD);
    CK_SESSION_HANDLE real = 0;
    rv = c.R->C_OpenSession(slotID, flags, pApplication, Notify, &real);
    if (rv != CKR_OK)
        return fm_finish(&c, rv);
    fm_lock();
    CK_SESSION_HANDLE h = fm_sessions_add_locked(real, slotID);
    fm_unlock();
    if (!h) {
        c.R->C_CloseSession(real);
        return fm_finish(&c, CKR_HOST_MEMORY);
    }
    *phSession = h;
    return fm_finish(&c, CKR_OK);
}

CK_RV w_C_CloseSession(CK_SESSION_HANDLE hSession)
{
    fm_call c;
    CK_SESSION_HANDLE real = 0;
    CK_RV rv = fm_enter_session(FN_C_CloseSession, &c, hSession, &real);
    if (rv == CKR_DEVICE_REMOVED)
        fm_forget_session(hSession);
    if (rv != CKR_OK)
        return fm_finish(&c, rv);
    if (c.fault)
        return fm_finish(&c, fm_deliver(&c, 1, hSession, real));
    rv = c.R->C_CloseSession(real);
    if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
        fm_forget_session(hSession);
    return fm_finish(&c, rv);
}

/* C_CloseAllSessions: our sessions of the slot go when the real module's
 * do. While the token is removed the removal closed the real ones already,
 * and it succeeds for a slot that exists. */
static CK_RV close_slot_sessions(fm_call *c, CK_SLOT_ID slotID)
{
    CK_SLOT_INFO info;
    CK_RV rv = c->removed ? c->R->C_GetSlotInfo(slotID, &info) : c->R->C_CloseAllSessions(slotID);
    if (rv == CKR_OK) {
        fm_lock();
        fm_sessions_drop_locked(0, slotID, NULL);
        fm_unlock();
    }
    return rv;
}

CK_RV w_C_CloseAllSessions(CK_SLOT_ID slotID)
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

FM_SESSION_ONLY_WRAPPER(C_Logout)
