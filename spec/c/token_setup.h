/* What the C drivers of the busted specs start with: a module, its token
 * found by label and logged in, and the one key pair of a set. */
#ifndef JWKE_TEST_TOKEN_SETUP_H
#define JWKE_TEST_TOKEN_SETUP_H

#include "p11_keys.h"
#include "p11_key_struct.h"
#include "p11_token.h"

typedef struct test_token {
    jwke_p11_module *module;
    jwke_p11_token *token;
    jwke_p11_key *key;
} test_token;

/* 0, or -1 after saying why on stderr. */
int test_token_open(test_token *t, const char *module_path, const char *token_label,
                    const char *pin, const char *key_label, const jwke_p11_options *options);
void test_token_close(test_token *t);

#endif
