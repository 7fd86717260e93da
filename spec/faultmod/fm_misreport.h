/* Wrong answers from a token that says it succeeded: misreported lengths
 * (JWKE_FAULT_LENGTHS, lengths= in the control file) on C_GetAttributeValue,
 * C_Sign, C_FindObjects and C_GetSlotList, and corrupt signatures
 * (JWKE_FAULT_CORRUPT_SIGNATURE). The real module does the work; only what
 * the caller is told changes, and nothing is written past the caller's
 * buffer. Each misreport counts as an injected fault of its function. */
#ifndef JWKE_FM_MISREPORT_H
#define JWKE_FM_MISREPORT_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>

typedef struct fm_config fm_config;
typedef struct fm_call fm_call;

/* A misreported length: what the function says it wrote, after the real
 * module did the work. */
enum { LEN_REAL, LEN_EXACT, LEN_OVER_REAL, LEN_OVER_BUFFER };

typedef struct {
    int fn;                      /* C_GetAttributeValue, C_Sign, C_FindObjects, C_GetSlotList */
    CK_ATTRIBUTE_TYPE attribute; /* C_GetAttributeValue only */
    int kind;
    CK_ULONG n;                  /* LEN_EXACT: the length; LEN_OVER_*: how much more */
    int has_code;
    CK_RV code;                  /* replaces the real return code (CKR_OK allowed) */
} fm_length;

/* A call carries a copy of its function's rules (fm_call.lengths). */
#define FM_MAX_LENGTHS_PER_CALL 16

/* One item of a JWKE_FAULT_LENGTHS list into cfg->lengths (an fm_add_item). */
int fm_add_length(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                  const char *where);

/* C_Sign, C_FindObjects, C_GetSlotList after a real success that wrote
 * into the caller's buffer (`buffer` entries): *out_len becomes the rule's
 * claim. Returns the code to give. */
CK_RV fm_misreport_output(fm_call *c, int wrote, CK_ULONG_PTR out_len, CK_ULONG buffer, CK_RV rv);

/* C_GetAttributeValue after the real call: each attribute with a rule
 * gets the rule's claim, when the object has that attribute. `given`
 * holds the buffer sizes the caller passed. */
CK_RV fm_misreport_attributes(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE object,
                              CK_ATTRIBUTE_PTR t, CK_ULONG count, const CK_ULONG *given, CK_RV rv);

/* Flips the last byte of a signature C_Sign wrote (JWKE_FAULT_CORRUPT_SIGNATURE):
 * a token that signs wrongly without saying so. `buffer` is the caller's
 * buffer size, so a misreported length never moves the flip outside it. */
CK_RV fm_corrupt_signature(CK_RV rv, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len, CK_ULONG buffer);

#endif
