/* A token's login and the PIN it keeps for logging in again (after a
 * fork, a device reset, a token that logged out), opaque outside
 * p11_login.c.
 *
 * PIN hygiene: the PIN lives in one locked, wiped-on-free buffer, never
 * copied elsewhere. A PIN the token refused is never tried again, and no
 * login is attempted while the token says the PIN is locked, on its final
 * try, or must be changed. The token's lock guards the kept PIN: every
 * function but the PIN's intake (jwke_p11_pin_take) is called holding it. */
#ifndef JWKE_P11_LOGIN_H
#define JWKE_P11_LOGIN_H

#include <stddef.h>

#include "error.h"
#include "p11_module.h"
#include "pin_source.h"

typedef struct jwke_p11_kept_pin jwke_p11_kept_pin;

/* No PIN yet. NULL when out of memory. */
jwke_p11_kept_pin *jwke_p11_kept_pin_new(void);
/* Wipes and frees. */
void jwke_p11_kept_pin_free(jwke_p11_kept_pin *kept);

/* A PIN written by fill straight into new locked memory: *pin (free it
 * with jwke_p11_kept_pin_replace, which takes it over), or -1 with err. */
int jwke_p11_pin_take(jwke_pin_fill fill, const void *ctx, unsigned char **pin, size_t *len,
                      jwke_error *err);

/* Puts pin (from jwke_p11_pin_take, taken over; NULL drops the PIN) in
 * place of the kept one, which is wiped; a PIN given anew gets one try. */
void jwke_p11_kept_pin_replace(jwke_p11_kept_pin *kept, unsigned char *pin, size_t len);

/* Wipes the kept PIN after a failed login, remembering whether the token
 * refused it (recovery then fails saying so rather than going on without
 * a login). */
void jwke_p11_kept_pin_drop(jwke_p11_kept_pin *kept);

/* Whether a PIN is kept, and whether the token refused it. */
int jwke_p11_kept_pin_present(const jwke_p11_kept_pin *kept);
int jwke_p11_kept_pin_refused(const jwke_p11_kept_pin *kept);

/* CKU_USER login of *session in slot with the kept PIN (reopening *session
 * once when it is gone), unless the PIN was refused before (failing with
 * ERR_LOGIN_REFUSED at once) or the token's flags forbid a try. A PIN the
 * token refuses is marked refused. The caller is inside the module and
 * holds the token's lock. */
int jwke_p11_kept_pin_log_in(jwke_p11_kept_pin *kept, jwke_p11_module *module, CK_SLOT_ID slot,
                             CK_SESSION_HANDLE *session, jwke_error *err);

/* ctx: a file's path; one line, a trailing newline dropped. The PIN never
 * passes through Lua. */
jwke_pin_filler jwke_pin_from_file;

#endif
