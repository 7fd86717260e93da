/* The cryptographic operations: encryption, decryption, digesting, signing
 * and verifying, single-part, multi-part and dual-function. What an
 * injected fault leaves of the real operation is fm_call.h's (the *_CALL
 * macros); C_Sign may also corrupt its signature (fm_misreport.h). */
#include "fm_call.h"
#include "fm_wrappers.h"

FM_SESSION_WRAPPER(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism),
                   (real, pMechanism))

CK_RV w_C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
    UPDATE_CALL(C_DigestKey, OP_DIGEST, (real, hKey));
}

/* C_Sign forwards as the single-part family does, then may corrupt what
 * the token returned (fm_corrupt_signature). */
static CK_RV forward_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                            CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    SINGLE_CALL(C_Sign, pData, ulDataLen, pSignature, pulSignatureLen);
}

CK_RV w_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
               CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    CK_ULONG buffer = pulSignatureLen ? *pulSignatureLen : 0;
    return fm_corrupt_signature(forward_C_Sign(hSession, pData, ulDataLen, pSignature, pulSignatureLen),
                                pSignature, pulSignatureLen, buffer);
}

CK_RV w_C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                 CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    VERIFY_CALL(C_Verify, (real, pData, ulDataLen, pSignature, ulSignatureLen));
}

CK_RV w_C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                      CK_ULONG ulSignatureLen)
{
    VERIFY_CALL(C_VerifyFinal, (real, pSignature, ulSignatureLen));
}

/* The wrappers that differ only in their name, written once per family:
 * the family's parameter list, and how the wrapper treats its calls (the
 * *_CALL macros of fm_call.h). The others are written out above. */

/* C_xInit(session, mechanism, key): forwarded, or failed. */
#define FM_INIT_FUNCTIONS(X)                                                     \
    X(C_EncryptInit) X(C_DecryptInit) X(C_SignInit) X(C_SignRecoverInit)         \
    X(C_VerifyInit) X(C_VerifyRecoverInit)
#define FM_INIT_WRAPPER(name)                                                    \
    FM_SESSION_WRAPPER(name, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, \
                              CK_OBJECT_HANDLE hKey), (real, pMechanism, hKey))
FM_INIT_FUNCTIONS(FM_INIT_WRAPPER)

/* Single-part calls with output, C_x(session, in, in_len, out, out_len):
 * see SINGLE_CALL. */
#define FM_SINGLE_FUNCTIONS(X)                                                   \
    X(C_Encrypt) X(C_Decrypt) X(C_Digest) X(C_SignRecover) X(C_VerifyRecover)
#define FM_SINGLE_WRAPPER(name)                                                  \
    CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulInLen, \
                          CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen)              \
    {                                                                            \
        SINGLE_CALL(name, pIn, ulInLen, pOut, pulOutLen);                        \
    }
FM_SINGLE_FUNCTIONS(FM_SINGLE_WRAPPER)

/* C_xFinal(session, out, out_len): see FINAL_CALL. */
#define FM_FINAL_FUNCTIONS(X)                                                    \
    X(C_EncryptFinal) X(C_DecryptFinal) X(C_DigestFinal) X(C_SignFinal)
#define FM_FINAL_WRAPPER(name)                                                   \
    CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut,          \
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
    CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) \
    {                                                                            \
        UPDATE_CALL(name, op, (real, pPart, ulPartLen));                         \
    }
FM_UPDATE_FUNCTIONS(FM_UPDATE_WRAPPER)

#define FM_UPDATE_OUT_FUNCTIONS(X) X(C_EncryptUpdate, OP_ENCRYPT) X(C_DecryptUpdate, OP_DECRYPT)
#define FM_UPDATE_OUT_WRAPPER(name, op)                                          \
    CK_RV w_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulInLen, \
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
