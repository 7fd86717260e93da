/* Key management and random numbers: forwarded, or failed. */
#include "fm_call.h"
#include "fm_wrappers.h"

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
