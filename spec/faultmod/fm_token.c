/* The token's presence, PIN flags and session limit (see fm_token.h). */
#include "fm_token.h"

#include "fm_lock.h"
#include "fm_real.h"
#include "fm_sessions.h"
#include "fm_settings.h"
#include "fm_stats.h"

#include <string.h>

void fm_token_presence_locked(int was_removed, int removed)
{
    int initialized = fm_real_initialized_locked();
    if (!was_removed && removed) {
        /* A pulled token takes its sessions (and its login) with it. */
        fm_sessions_drop_locked(1, 0, initialized ? fm_real_list_locked() : NULL);
        if (initialized) {
            fm_stats_count_locked(FM_STAT_REMOVALS);
            fm_log("token removed: every slot reports no token");
        }
    } else if (was_removed && !removed && initialized) {
        fm_stats_count_locked(FM_STAT_INSERTIONS);
        fm_log("token re-inserted: old session handles stay invalid");
    }
}

CK_RV fm_token_absent(CK_FUNCTION_LIST_PTR real, CK_SLOT_ID slot)
{
    CK_SLOT_INFO info;
    CK_RV rv = real->C_GetSlotInfo(slot, &info);
    return rv == CKR_OK ? CKR_TOKEN_NOT_PRESENT : rv;
}

void fm_token_report_locked(CK_TOKEN_INFO_PTR info)
{
    const fm_config *cfg = fm_settings_locked();
    info->flags |= cfg->token_flags;
    /* What a networked HSM says about its sessions, when a test sets a limit. */
    if (!cfg->token_max_sessions)
        return;
    info->ulMaxSessionCount = cfg->token_max_sessions;
    info->ulMaxRwSessionCount = cfg->token_max_sessions;
    info->ulSessionCount = fm_sessions_count_locked();
    info->ulRwSessionCount = fm_sessions_count_locked(); /* the engine opens read-write sessions only */
}

/* Token flags a test may add to what the real token reports. */
static const struct {
    const char *name;
    CK_FLAGS flag;
} token_flag_names[] = {
    {"CKF_USER_PIN_COUNT_LOW", CKF_USER_PIN_COUNT_LOW},
    {"CKF_USER_PIN_FINAL_TRY", CKF_USER_PIN_FINAL_TRY},
    {"CKF_USER_PIN_LOCKED", CKF_USER_PIN_LOCKED},
    {"CKF_USER_PIN_TO_BE_CHANGED", CKF_USER_PIN_TO_BE_CHANGED},
};

int fm_token_parse_flags(const char *v, size_t n, CK_FLAGS *out)
{
    *out = 0;
    const char *p = v, *end = v + n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        while (p < item_end && (*p == ' ' || *p == '\t'))
            p++;
        const char *e = item_end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > p) {
            size_t i, len = (size_t)(e - p);
            for (i = 0; i < sizeof token_flag_names / sizeof token_flag_names[0]; i++)
                if (strlen(token_flag_names[i].name) == len &&
                    memcmp(token_flag_names[i].name, p, len) == 0)
                    break;
            if (i == sizeof token_flag_names / sizeof token_flag_names[0])
                return -1;
            *out |= token_flag_names[i].flag;
        }
        p = comma ? comma + 1 : end;
    }
    return 0;
}
