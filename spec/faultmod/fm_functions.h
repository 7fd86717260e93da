/* The PKCS#11 v2.40 functions the module wraps, as one table: the order of
 * CK_FUNCTION_LIST, an index per function (FN_C_Sign, ...) that every
 * counter, rule and latency is kept by, and the names rules are written in. */
#ifndef JWKE_FM_FUNCTIONS_H
#define JWKE_FM_FUNCTIONS_H

#include <stddef.h>

/* The module's two exported symbols (C_GetFunctionList, jwke_faultmod_stats);
 * everything else is hidden (C_VISIBILITY_PRESET hidden). */
#define FM_EXPORT __attribute__((visibility("default")))

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

/* "C_Sign" for FN_C_Sign. */
const char *fm_function_name(int fn);

/* The index of the function named by the n bytes at s, or -1. */
int fm_function_lookup(const char *s, size_t n);

#endif
