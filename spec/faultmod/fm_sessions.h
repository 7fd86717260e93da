/* The sessions opened through the module. The wrapper gives out its own
 * session handles, never reused, and maps each to the real module's, so
 * that a handle from before a simulated removal stays invalid for good
 * after re-insertion, as on a real token. Each session remembers when it
 * was last used, for idle expiry (JWKE_FAULT_SESSION_IDLE_MS). */
#ifndef JWKE_FM_SESSIONS_H
#define JWKE_FM_SESSIONS_H

#include <p11-kit/pkcs11.h>

/* A new session over the real one, on slot: its handle, 0 when out of
 * memory. */
CK_SESSION_HANDLE fm_sessions_add_locked(CK_SESSION_HANDLE real, CK_SLOT_ID slot);

/* The real session behind h (and h's idle time starts over), or
 * CKR_SESSION_HANDLE_INVALID. */
CK_RV fm_sessions_use_locked(CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real);

/* Whether h was ever given out (removal answers those CKR_DEVICE_REMOVED). */
int fm_sessions_issued_locked(CK_SESSION_HANDLE h);

void fm_sessions_forget_locked(CK_SESSION_HANDLE h);

/* Drops every session (of one slot, or all); closes them in close_in,
 * the real module, unless NULL. */
void fm_sessions_drop_locked(int all_slots, CK_SLOT_ID slot, CK_FUNCTION_LIST_PTR close_in);

/* Closes (in real, unless NULL) every session idle for more than idle_ms;
 * 0 = never. */
void fm_sessions_expire_idle_locked(unsigned long idle_ms, CK_FUNCTION_LIST_PTR real);

unsigned long fm_sessions_count_locked(void);
unsigned long fm_sessions_peak_locked(void);
/* A forked child's peak starts from what it inherited. */
void fm_sessions_fork_child_locked(void);

#endif
