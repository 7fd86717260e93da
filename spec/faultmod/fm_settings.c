/* The settings (see fm_settings.h). */
#include "fm_settings.h"

#include "fm_control.h"
#include "fm_latency.h"
#include "fm_lock.h"
#include "fm_process.h"
#include "fm_real.h"
#include "fm_stats.h"
#include "fm_text.h"
#include "fm_token.h"

#include <stdlib.h>
#include <string.h>

static fm_config current; /* the settings in force */

static void rules_free(fm_config *c)
{
    free(c->rules);
    c->rules = NULL;
    c->nrules = 0;
}

static void lengths_free(fm_config *c)
{
    free(c->lengths);
    c->lengths = NULL;
    c->nlengths = 0;
}

void fm_config_free(fm_config *c)
{
    rules_free(c);
    lengths_free(c);
}

/* A count up to max; empty means 0 (off). */
static int parse_count(const char *v, size_t n, uint64_t max, const char *what,
                       unsigned long *out, char *err, size_t errlen, const char *where)
{
    uint64_t u = 0;
    if (n > 0 && (fm_parse_u64(v, n, &u) != 0 || u > max)) {
        fm_set_err(err, errlen, "%s: expected %s, got '%.*s'", where, what, (int)n, v);
        return -1;
    }
    *out = (unsigned long)u;
    return 0;
}

/* A 0/1 setting (parse_bool's spellings). */
static int parse_switch(const char *v, size_t n, int *out, char *err, size_t errlen,
                        const char *where)
{
    if (fm_parse_bool(v, n, out) == 0)
        return 0;
    fm_set_err(err, errlen, "%s: expected 0 or 1, got '%.*s'", where, (int)n, v);
    return -1;
}

/* One setting (from the environment or the control file) into cfg. */
int fm_setting_apply(fm_config *cfg, int key, const char *v, size_t n, char *err,
                     size_t errlen, const char *where)
{
    switch (key) {
    case KEY_FAULTS:
        return fm_parse_list(v, n, fm_add_rule, cfg, err, errlen, where);
    case KEY_LATENCY:
        return fm_parse_list(v, n, fm_add_latency, cfg, err, errlen, where);
    case KEY_REMOVED:
        return parse_switch(v, n, &cfg->removed, err, errlen, where);
    case KEY_SEED:
        if (fm_parse_u64(v, n, &cfg->seed) != 0) {
            fm_set_err(err, errlen, "%s: expected a decimal or 0x hex number, got '%.*s'", where,
                       (int)n, v);
            return -1;
        }
        return 0;
    case KEY_MAX_SESSIONS:
        return parse_count(v, n, 1000000, "a session count", &cfg->max_sessions, err, errlen,
                           where);
    case KEY_TOKEN_MAX_SESSIONS:
        return parse_count(v, n, 1000000, "a session count", &cfg->token_max_sessions, err,
                           errlen, where);
    case KEY_SESSION_IDLE_MS:
        return parse_count(v, n, 86400000, "milliseconds", &cfg->session_idle_ms, err, errlen,
                           where);
    case KEY_CORRUPT_SIGNATURE:
        return parse_switch(v, n, &cfg->corrupt_signature, err, errlen, where);
    case KEY_LENGTHS:
        return fm_parse_list(v, n, fm_add_length, cfg, err, errlen, where);
    case KEY_TOKEN_FLAGS:
        if (fm_token_parse_flags(v, n, &cfg->token_flags) != 0) {
            fm_set_err(err, errlen, "%s: expected CKF_USER_PIN_* names separated by commas, got '%.*s'",
                       where, (int)n, v);
            return -1;
        }
        return 0;
    }
    return -1;
}

static const char *const env_names[KEY_COUNT] = {
    "JWKE_FAULTS", "JWKE_FAULT_LATENCY_US", "JWKE_FAULT_REMOVED", "JWKE_FAULT_SEED",
    "JWKE_FAULT_MAX_SESSIONS", "JWKE_FAULT_TOKEN_FLAGS", "JWKE_FAULT_LENGTHS",
    "JWKE_FAULT_TOKEN_MAX_SESSIONS", "JWKE_FAULT_SESSION_IDLE_MS", "JWKE_FAULT_CORRUPT_SIGNATURE",
};
static const char *const control_keys[KEY_COUNT] = {
    "faults", "latency", "removed", "seed", "max_sessions", "token_flags", "lengths",
    "token_max_sessions", "session_idle_ms", "corrupt_signature",
};

const char *fm_setting_control_key(int key)
{
    return control_keys[key];
}

int fm_setting_adds_up(int key)
{
    return key == KEY_FAULTS || key == KEY_LATENCY || key == KEY_LENGTHS;
}

void fm_setting_reset(fm_config *cfg, int key)
{
    switch (key) {
    case KEY_FAULTS: rules_free(cfg); break;
    case KEY_LENGTHS: lengths_free(cfg); break;
    case KEY_LATENCY: memset(cfg->latency_us, 0, sizeof cfg->latency_us); break;
    case KEY_REMOVED: cfg->removed = 0; break;
    case KEY_SEED: cfg->seed = FM_DEFAULT_SEED; break;
    case KEY_MAX_SESSIONS: cfg->max_sessions = 0; break;
    case KEY_TOKEN_FLAGS: cfg->token_flags = 0; break;
    case KEY_TOKEN_MAX_SESSIONS: cfg->token_max_sessions = 0; break;
    case KEY_SESSION_IDLE_MS: cfg->session_idle_ms = 0; break;
    case KEY_CORRUPT_SIGNATURE: cfg->corrupt_signature = 0; break;
    }
}

/* The settings: environment, then the control file over it. */
int fm_settings_build(fm_config *cfg, fm_fileid *id, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->seed = FM_DEFAULT_SEED;
    memset(id, 0, sizeof *id);
    for (int k = 0; k < KEY_COUNT; k++) {
        const char *v = getenv(env_names[k]);
        if (v && fm_setting_apply(cfg, k, v, strlen(v), err, errlen, env_names[k]) != 0) {
            fm_config_free(cfg);
            return -1;
        }
    }
    if (fm_control_apply(cfg, id, err, errlen) != 0) {
        fm_config_free(cfg);
        return -1;
    }
    return 0;
}

fm_config *fm_settings_locked(void)
{
    return &current;
}

void fm_settings_replace_locked(fm_config *cfg)
{
    int was_removed = current.removed;
    fm_config_free(&current);
    current = *cfg;
    memset(cfg, 0, sizeof *cfg);
    fm_rules_reseed_locked(current.seed);
    fm_token_presence_locked(was_removed, current.removed);
}

void fm_settings_free_locked(void)
{
    fm_config_free(&current);
}

static char *env_dup(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        v = fallback;
    return v ? strdup(v) : NULL;
}

/* A switch variable: on when set to one of fm_parse_bool's spellings of on. */
static int env_switch(const char *name)
{
    const char *v = getenv(name);
    int flag = 0;
    return v && fm_parse_bool(v, strlen(v), &flag) == 0 && flag;
}

void fm_settings_read_process_locked(void)
{
    fm_real_set_path_locked(env_dup("JWKE_FAULT_MODULE", FM_DEFAULT_MODULE));
    const char *v = getenv("JWKE_FAULT_CONTROL_INTERVAL_MS");
    long interval_ms = v ? atol(v) : 0;
    fm_control_configure_locked(env_dup("JWKE_FAULT_CONTROL", NULL),
                                interval_ms < 0 ? 0 : interval_ms);
    fm_stats_configure_locked(env_dup("JWKE_FAULT_STATS", NULL),
                              env_switch("JWKE_FAULT_STATS_SYNC"));
    fm_log_set_verbose_locked(env_switch("JWKE_FAULT_VERBOSE"));
    fm_process_set_fork_strict_locked(env_switch("JWKE_FAULT_FORK_STRICT"));
}
