/* The settings: what the environment and the control file ask of the
 * module (fault rules, latency, removal, seed, session limits, token
 * flags, misreported lengths, idle expiry, corrupt signatures), parsed
 * into one fm_config. Each setting is one key, spelled JWKE_FAULTS /
 * JWKE_FAULT_<KEY> in the environment and <key> in the control file.
 *
 * The settings in force are kept here; C_Initialize and a control-file
 * reload replace them as a whole, so a call never sees half of a change. */
#ifndef JWKE_FM_SETTINGS_H
#define JWKE_FM_SETTINGS_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>
#include <stdint.h>

#include "fm_functions.h"
#include "fm_misreport.h"
#include "fm_rules.h"

#define FM_DEFAULT_SEED 0x6a776b65ULL

struct fm_config {
    fm_rule *rules;
    size_t nrules;
    fm_length *lengths;
    size_t nlengths;
    unsigned long latency_us[FN_COUNT];
    int removed;
    uint64_t seed;
    unsigned long max_sessions;
    CK_FLAGS token_flags;  /* ORed into C_GetTokenInfo's flags */
    unsigned long token_max_sessions; /* reported by C_GetTokenInfo (0: the real value) */
    unsigned long session_idle_ms;    /* idle sessions expire after it (0: never) */
    int corrupt_signature;            /* flip a byte of every C_Sign output */
};

enum { KEY_FAULTS, KEY_LATENCY, KEY_REMOVED, KEY_SEED, KEY_MAX_SESSIONS, KEY_TOKEN_FLAGS,
       KEY_LENGTHS, KEY_TOKEN_MAX_SESSIONS, KEY_SESSION_IDLE_MS, KEY_CORRUPT_SIGNATURE,
       KEY_COUNT };

/* The control file's name of a key ("faults", ...). */
const char *fm_setting_control_key(int key);
/* Back to its default (the control file replaces the environment's value). */
void fm_setting_reset(fm_config *cfg, int key);
/* Keys whose repeated lines add up (faults, latency, lengths). */
int fm_setting_adds_up(int key);
/* One setting's text v[0..n) into cfg. */
int fm_setting_apply(fm_config *cfg, int key, const char *v, size_t n, char *err, size_t errlen,
                     const char *where);

/* The settings: environment, then the control file over it; *id is the
 * control file as read (fm_control.h). */
typedef struct fm_fileid fm_fileid;
int fm_settings_build(fm_config *cfg, fm_fileid *id, char *err, size_t errlen);
void fm_config_free(fm_config *c);

/* The settings in force. */
fm_config *fm_settings_locked(void);
/* Replaces them (taking ownership of cfg): the %P coin starts over, and a
 * change of the removed flag pulls or re-inserts the token. */
void fm_settings_replace_locked(fm_config *cfg);
/* At unload, when not initialized. */
void fm_settings_free_locked(void);

/* The process settings, read at C_Initialize into their owners (the real
 * module's path, the control file, the stats file, verbose, fork_strict). */
void fm_settings_read_process_locked(void);

#endif
