/* The C drivers' common start (see token_setup.h). */
#include "token_setup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11_map.h"

int test_token_open(test_token *t, const char *module_path, const char *token_label,
                    const char *pin, const char *key_label, const jwke_p11_options *options)
{
    memset(t, 0, sizeof *t);
    jwke_error err;
    jwke_p11_slot *slots;
    size_t count;
    t->module = jwke_p11_module_acquire(module_path, NULL, &err);
    if (!t->module || jwke_p11_list_slots(t->module, &slots, &count, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    size_t s = 0;
    while (s < count && strcmp(slots[s].label, token_label) != 0)
        s++;
    if (s == count) {
        free(slots);
        fprintf(stderr, "no token %s\n", token_label);
        return -1;
    }
    t->token = jwke_p11_token_open(t->module, slots[s].id, slots[s].label, slots[s].serial,
                                   options, &err);
    free(slots);
    size_t n_keys = 0;
    int failed = !t->token || jwke_p11_login(t->token, pin, strlen(pin), &err) != 0 ||
                 jwke_p11_load_set(t->token, key_label, strlen(key_label), NULL, 0, 2048, &t->key,
                                   &n_keys, &err) != 0;
    if (failed || n_keys != 1) {
        fprintf(stderr, "setup failed: %s\n", failed ? err.message : "not one key in the set");
        return -1;
    }
    return 0;
}

void test_token_close(test_token *t)
{
    jwke_p11_keys_free(t->key, 1);
    jwke_p11_token_close(t->token);
    jwke_p11_module_release(t->module);
}
