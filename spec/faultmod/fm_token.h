/* The token as the module presents it: pulled out and put back
 * (JWKE_FAULT_REMOVED, removed= in the control file), with PIN state flags
 * (JWKE_FAULT_TOKEN_FLAGS) and a session limit (JWKE_FAULT_TOKEN_MAX_SESSIONS)
 * that the real token does not have. */
#ifndef JWKE_FM_TOKEN_H
#define JWKE_FM_TOKEN_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>

/* The removed flag went from was_removed to removed: a pulled token takes
 * its sessions (and so its login) with it; a re-inserted one comes back
 * logged out, every old handle invalid. */
void fm_token_presence_locked(int was_removed, int removed);

/* While the token is removed: CKR_TOKEN_NOT_PRESENT for a slot that
 * exists (the real module's answer for one that does not). */
CK_RV fm_token_absent(CK_FUNCTION_LIST_PTR real, CK_SLOT_ID slot);

/* What C_GetTokenInfo reports over the real token's answer: the PIN
 * states and the session limit a test asks for. */
void fm_token_report_locked(CK_TOKEN_INFO_PTR info);

/* "CKF_A,CKF_B" (or empty) -> flags; -1 on an unknown name. */
int fm_token_parse_flags(const char *v, size_t n, CK_FLAGS *out);

#endif
