/* Slot and token management, and slot events: where a removed token shows
 * (no token in the slot, CKR_TOKEN_NOT_PRESENT) and where the token's PIN
 * flags and session limit are reported. */
#include "fm_call.h"
#include "fm_wrappers.h"
#include "fm_lock.h"
#include "fm_token.h"

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
    return fm_misreport_output(c, pSlotList != NULL, pulCount, buffer, rv);
}

CK_RV w_C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
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

CK_RV w_C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    SLOT_BASE(C_GetSlotInfo, 0, CKR_OK, slot_info(&c, slotID, pInfo));
}

/* C_GetTokenInfo forwarded, with the PIN states and session limit a test
 * asks for. */
static CK_RV token_info(fm_call *c, CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    CK_RV rv = c->R->C_GetTokenInfo(slotID, pInfo);
    if (rv == CKR_OK) {
        fm_lock();
        fm_token_report_locked(pInfo);
        fm_unlock();
    }
    return rv;
}

CK_RV w_C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    SLOT_BASE(C_GetTokenInfo, 1, fm_token_absent(c.R, slotID), token_info(&c, slotID, pInfo));
}

CK_RV w_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList,
                           CK_ULONG_PTR pulCount)
{
    TOKEN_CALL(C_GetMechanismList, slotID, (slotID, pMechanismList, pulCount));
}

CK_RV w_C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type,
                           CK_MECHANISM_INFO_PTR pInfo)
{
    TOKEN_CALL(C_GetMechanismInfo, slotID, (slotID, type, pInfo));
}

CK_RV w_C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                    CK_UTF8CHAR_PTR pLabel)
{
    TOKEN_CALL(C_InitToken, slotID, (slotID, pPin, ulPinLen, pLabel));
}

FM_SESSION_WRAPPER(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
                   (real, pPin, ulPinLen))

FM_SESSION_WRAPPER(C_SetPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin,
                              CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen),
                   (real, pOldPin, ulOldLen, pNewPin, ulNewLen))

CK_RV w_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
    PLAIN_CALL(C_WaitForSlotEvent, (flags, pSlot, pReserved));
}
