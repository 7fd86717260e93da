#!/bin/sh
# Regenerates core/ckr_names.c from the PKCS#11 header Debian ships in
# libp11-kit-dev, so error messages can name every CKR_ code the header knows.
set -eu
header=${1:-/usr/include/p11-kit-1/p11-kit/pkcs11.h}
out=$(dirname "$0")/../core/ckr_names.c
{
  echo '/* Generated from p11-kit/pkcs11.h: every CKR_ constant and its name.'
  echo ' * Regenerate with scripts/gen-ckr-names.sh when the header grows. */'
  echo '#include "ckr_names.h"'
  echo ''
  echo 'const char *jwke_ckr_name(CK_RV rv)'
  echo '{'
  echo '    switch (rv) {'
  grep -E '^#define CKR_[A-Z0-9_]+\s+\(' "$header" | awk '{print $2}' | grep -v VENDOR_DEFINED |
    while read -r name; do echo "    case $name: return \"$name\";"; done
  echo '    default: return NULL;'
  echo '    }'
  echo '}'
} > "$out"
