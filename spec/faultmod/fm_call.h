/* One call through the module, from entry to answer: what every wrapper
 * (fm_w_*.c) is made of.
 *
 * A wrapper enters (the call is counted, the control file looked at, idle
 * sessions expired, the fault decided, the latency slept), then either
 * delivers the injected fault (after leaving the real module as a real
 * token would be after that failure) or forwards the call, and finishes
 * (errors counted, stats synced). The macros below write that once; the
 * wrappers differ only in what the real module must see before a fault is
 * delivered and in how the call is forwarded. */
#ifndef JWKE_FM_CALL_H
#define JWKE_FM_CALL_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>

#include "fm_functions.h"
#include "fm_misreport.h"
#include "fm_token.h"

struct fm_call {
    int fn;
    CK_FUNCTION_LIST_PTR R;
    int removed;
    int sync;
    CK_RV fault;
    int transient;
    unsigned long number; /* this call's number in the window */
    fm_length lengths[FM_MAX_LENGTHS_PER_CALL]; /* this function's, as set at the call */
    size_t nlengths;
};

/* Counts the call, looks at the control file, decides the fault, sleeps the
 * latency. CKR_CRYPTOKI_NOT_INITIALIZED when the module is not initialized. */
CK_RV fm_enter(int fn, fm_call *c);

/* fm_enter, then the real session behind the caller's h: what every call on
 * a session starts with (CKR_DEVICE_REMOVED while the token is removed,
 * CKR_SESSION_HANDLE_INVALID for a handle the token forgot). */
CK_RV fm_enter_session(int fn, fm_call *c, CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real);

/* Counts the outcome; returns rv. */
CK_RV fm_finish(fm_call *c, CK_RV rv);

/* Returns the injected code, after its side effects on the session (when
 * has_session and the fault is not transient): CKR_SESSION_HANDLE_INVALID
 * and CKR_SESSION_CLOSED close it in the real module, CKR_USER_NOT_LOGGED_IN
 * logs the token out. */
CK_RV fm_deliver(fm_call *c, int has_session, CK_SESSION_HANDLE h, CK_SESSION_HANDLE real);

/* Forgets the caller's session h. */
void fm_forget_session(CK_SESSION_HANDLE h);

/* A real call that writes output: single-part (C_Sign(session, in, in_len,
 * out, out_len), ...) when `single` is set, else final (C_SignFinal(session,
 * out, out_len), ...). One description, so that what a fault does to the
 * real operation is written once for both. */
typedef CK_RV (*fm_final_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*fm_single_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef struct {
    fm_single_fn single;
    fm_final_fn final;
    CK_BYTE_PTR in;
    CK_ULONG inlen;
} fm_output_call;


/* What an injected fault leaves of the real output call's operation. With
 * `keep` (CKR_BUFFER_TOO_SMALL) the operation stays and *outlen gets the
 * real length; otherwise the operation is finished into a scratch buffer,
 * wiped and discarded, so it is gone as after a real failure. */
void fm_fault_output(const fm_output_call *o, CK_SESSION_HANDLE real, int keep,
                     CK_ULONG_PTR outlen);

/* The output call forwarded, its length as a JWKE_FAULT_LENGTHS rule may
 * misreport it (only C_Sign has such rules; the others pass unchanged). */
CK_RV fm_forward_output(fm_call *c, const fm_output_call *o, CK_SESSION_HANDLE real,
                        CK_BYTE_PTR out, CK_ULONG_PTR outlen);

enum { OP_SIGN, OP_VERIFY, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST };

/* Ends the multi-part operation `op` after a fault on one of its updates. */
void fm_terminate_op(CK_FUNCTION_LIST_PTR R, CK_SESSION_HANDLE real, int op);

/* The wrappers' bodies, as one macro family. Every wrapper counts its call
 * (fm_enter), answers a fault or forwards, and counts the outcome (fm_finish); the
 * family members differ only in what the real module must see before a
 * fault is delivered and in how the call is forwarded.
 *
 * Calls on a session (the wrapper's session parameter is hSession):
 *
 *   SESSION_BASE(name, on_fault, forward) expands to
 *       fm_enter_session(FN_name, ...)            (sets c, and real = the real
 *                                                session behind hSession)
 *       injected fault: on_fault; rv = fm_deliver(the fault, on the session)
 *       otherwise:      rv = forward            (an expression using `real`)
 *       return fm_finish(&c, rv)
 *   SESSION_CALL(name, args)     forwarded as c.R->name args (args name
 *                                `real` as the session), or failed
 *   UPDATE_CALL(name, op, args)  as SESSION_CALL; a fault ends operation op
 *   VERIFY_CALL(name, args)      as SESSION_CALL; a fault still forwards the
 *                                call (its result ignored), which ends the
 *                                operation
 *   SINGLE_CALL(name, in, inlen, out, outlen)
 *   FINAL_CALL(name, out, outlen)
 *                                output calls: a fault keeps or ends the
 *                                operation (fm_fault_output), forwarding may
 *                                misreport the length (fm_forward_output)
 */
#define SESSION_BASE(name, on_fault, forward)                              \
    do {                                                                   \
        fm_call c;                                                         \
        CK_SESSION_HANDLE real = 0;                                        \
        CK_RV rv = fm_enter_session(FN_##name, &c, hSession, &real);       \
        if (rv == CKR_OK && c.fault) {                                     \
            on_fault;                                                      \
            rv = fm_deliver(&c, 1, hSession, real);                        \
        } else if (rv == CKR_OK) {                                         \
            rv = (forward);                                                \
        }                                                                  \
        return fm_finish(&c, rv);                                          \
    } while (0)

#define SESSION_CALL(name, args) SESSION_BASE(name, (void)0, c.R->name args)
#define UPDATE_CALL(name, op, args) SESSION_BASE(name, fm_terminate_op(c.R, real, op), c.R->name args)
#define VERIFY_CALL(name, args) SESSION_BASE(name, c.R->name args, c.R->name args)

/* `o` is a pointer to the call's fm_output_call, built from c.R. */
#define OUTPUT_CALL(name, o, out, outlen)                                  \
    SESSION_BASE(name, fm_fault_output(o, real, c.fault == CKR_BUFFER_TOO_SMALL, outlen), \
                 fm_forward_output(&c, o, real, out, outlen))
#define SINGLE_CALL(name, in, inlen, out, outlen)                          \
    OUTPUT_CALL(name, (&(fm_output_call){ c.R->name, NULL, in, inlen }), out, outlen)
#define FINAL_CALL(name, out, outlen)                                      \
    OUTPUT_CALL(name, (&(fm_output_call){ NULL, c.R->name, NULL, 0 }), out, outlen)

/* The wrapper w_name(params) of a call on a session that is only forwarded
 * (or failed): `args` is the real call's argument list, as in SESSION_CALL. */
#define FM_SESSION_WRAPPER(name, params, args)                             \
    CK_RV w_##name params                                                  \
    {                                                                      \
        SESSION_CALL(name, args);                                          \
    }

/* The wrapper of a call C_x(session) that is only forwarded (or failed). */
#define FM_SESSION_ONLY_WRAPPER(name) FM_SESSION_WRAPPER(name, (CK_SESSION_HANDLE hSession), (real))

/* Calls not on a session:
 *
 *   SLOT_BASE(name, removal_wins, when_removed, forward) expands to
 *       fm_enter(FN_name, ...)                  (sets c)
 *       token removed and removal_wins: rv = when_removed (removal wins over
 *                                                an injected fault)
 *       injected fault:  rv = fm_deliver(the fault)
 *       otherwise:       rv = forward
 *       return fm_finish(&c, rv)
 *   PLAIN_CALL(name, args)        needs neither a session nor a token:
 *                                 forwarded as c.R->name args, or failed
 *   TOKEN_CALL(name, slot, args)  as PLAIN_CALL, for a call that needs the
 *                                 token in `slot` (CKR_TOKEN_NOT_PRESENT
 *                                 while it is removed)
 */
#define SLOT_BASE(name, removal_wins, when_removed, forward)               \
    do {                                                                   \
        fm_call c;                                                         \
        CK_RV rv = fm_enter(FN_##name, &c);                                \
        if (rv == CKR_OK && (removal_wins) && c.removed)                   \
            rv = (when_removed);                                           \
        else if (rv == CKR_OK && c.fault)                                  \
            rv = fm_deliver(&c, 0, 0, 0);                                  \
        else if (rv == CKR_OK)                                             \
            rv = (forward);                                                \
        return fm_finish(&c, rv);                                          \
    } while (0)

#define PLAIN_CALL(name, args) SLOT_BASE(name, 0, CKR_OK, c.R->name args)
#define TOKEN_CALL(name, slot, args) SLOT_BASE(name, 1, fm_token_absent(c.R, slot), c.R->name args)


#endif
