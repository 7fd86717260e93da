/* The function table's names (see fm_functions.h). */
#include "fm_functions.h"

#include <string.h>

static const char *const fn_names[FN_COUNT] = {
#define FM_NAME(name) #name,
    FM_FUNCTIONS(FM_NAME)
#undef FM_NAME
};

const char *fm_function_name(int fn)
{
    return fn_names[fn];
}

int fm_function_lookup(const char *s, size_t n)
{
    for (int i = 0; i < FN_COUNT; i++)
        if (strlen(fn_names[i]) == n && memcmp(fn_names[i], s, n) == 0)
            return i;
    return -1;
}
