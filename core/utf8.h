/* UTF-8 well-formedness (RFC 3629), shared by the strict JSON checker and
 * the claims encoder: what one refuses on the way in, the other refuses on
 * the way out. */
#ifndef JWKE_UTF8_H
#define JWKE_UTF8_H

#include <stddef.h>

/* Length of the well-formed multi-byte UTF-8 sequence at p (no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0. p < end; ASCII
 * bytes are not sequences here (0): callers handle them first. */
size_t jwke_utf8_sequence(const unsigned char *p, const unsigned char *end);

#endif
