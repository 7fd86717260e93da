#!/bin/sh
# Puts every busted spec file into the folder of its layer (spec/README.md
# says what each folder proves) and rewrites every reference that names a
# spec file's path (README.md, spec/timings.txt, scripts, comments in specs
# and helpers) to the new place.
#
#   scripts/spec-layout.sh
#
# Idempotent: a file already in its folder is left there, and a path
# already rewritten is not rewritten again. A spec file that is not in
# LAYOUT below (a new one, flat in spec/ or in a folder of its own) stops
# the script before anything moves, naming the file: a new spec gets its
# folder on purpose, by a line added here.
#
# spec/helpers, spec/c, spec/fuzz, spec/faultmod, spec/memcheck,
# spec/vectors and spec/nginx/client.py stay where they are: .busted's lpath
# (spec/?.lua) keeps require("helpers.x") working from every folder.
set -eu
cd "$(dirname "$0")/.."

# folder<space>file name, one spec file a line
LAYOUT='
core algorithms_spec.lua
core binding_input_spec.lua
core config_spec.lua
core config_settings_spec.lua
core error_codes_spec.lua
core errors_spec.lua
core hostile_keys_spec.lua
core http_none_match_spec.lua
core http_spec.lua
core log_spec.lua
core pkcs11_uri_spec.lua
core software_key_spec.lua
jose jose_conformance_spec.lua
jose jose_engine_spec.lua
jose jose_interop_spec.lua
jose jose_jws_spec.lua
jose jose_jwt_spec.lua
jose jose_malformed_spec.lua
pkcs11 backoff_spec.lua
pkcs11 data_objects_spec.lua
pkcs11 idle_login_spec.lua
pkcs11 open_unreachable_spec.lua
pkcs11 p11_module_spec.lua
pkcs11 recovery_spec.lua
pkcs11 reinsertion_spec.lua
pkcs11 robustness_spec.lua
pkcs11 session_budget_spec.lua
pkcs11 token_lengths_spec.lua
pkcs11 verify_after_sign_spec.lua
hsm nss_softokn_spec.lua
hsm p11kit_dead_server_spec.lua
hsm p11kit_remote_spec.lua
hsm several_hsms_nss_spec.lua
hsm several_hsms_spec.lua
hsm softhsm_suite_spec.lua
engine cli_spec.lua
engine engine_spec.lua
engine facade_spec.lua
engine facade_surface_spec.lua
engine health_spec.lua
engine hostile_input_spec.lua
engine hsm_pss_spec.lua
engine metrics_spec.lua
engine secrets_spec.lua
engine soak_spec.lua
engine x5c_spec.lua
lifecycle hsm_states_spec.lua
lifecycle lifecycle_faults_spec.lua
lifecycle lifecycle_records_spec.lua
lifecycle lifecycle_spec.lua
lifecycle lifecycle_store_spec.lua
lifecycle retire_mark_spec.lua
lifecycle rotation_spec.lua
stores store_hydra2_spec.lua
stores store_input_spec.lua
stores store_spec.lua
nginx hostile_nginx_spec.lua
nginx nginx_bench_spec.lua
nginx nginx_chaos_hsm_spec.lua
nginx nginx_chaos_hsm_rivals_spec.lua
nginx nginx_chaos_hsm_schema_spec.lua
nginx nginx_chaos_store_spec.lua
nginx nginx_chaos_store_rivals_spec.lua
nginx nginx_chaos_store_schema_spec.lua
nginx nginx_metrics_spec.lua
nginx nginx_options_spec.lua
nginx nginx_outage_spec.lua
nginx nginx_queue_spec.lua
nginx nginx_readme_spec.lua
nginx nginx_rotation_hsm_spec.lua
nginx nginx_rotation_spec.lua
nginx nginx_secrets_spec.lua
nginx nginx_session_budget_spec.lua
nginx nginx_several_hsms_spec.lua
nginx nginx_spec.lua
project corpus_spec.lua
project faultmod_spec.lua
project luarocks_spec.lua
project readme_toc_spec.lua
'

folder_of() { # file name: its folder, or nothing
  echo "$LAYOUT" | awk -v f="$1" '$2 == f { print $1 }'
}

# Every spec file must have a folder, and be in it or flat in spec/.
unknown=""
for path in $(find spec -name '*_spec.lua' | sort); do
  name=$(basename "$path")
  folder=$(folder_of "$name")
  if [ -z "$folder" ]; then
    unknown="$unknown $path"
  elif [ "$path" != "spec/$name" ] && [ "$path" != "spec/$folder/$name" ]; then
    unknown="$unknown $path(expected-spec/$folder/$name)"
  fi
done
if [ -n "$unknown" ]; then
  echo "spec-layout.sh: no folder for these spec files; add each to LAYOUT in scripts/spec-layout.sh:" >&2
  for path in $unknown; do echo "  $path" >&2; done
  exit 1
fi

# The moves.
echo "$LAYOUT" | while read -r folder name; do
  [ -n "$name" ] || continue
  if [ -e "spec/$name" ]; then
    mkdir -p "spec/$folder"
    git mv "spec/$name" "spec/$folder/$name"
  fi
done

# The references: spec/NAME becomes spec/FOLDER/NAME in every tracked text
# file. "spec/NAME" is not a substring of "spec/FOLDER/NAME", so a second
# run changes nothing. The nginx chaos specs are also named by a glob.
script=$(echo "$LAYOUT" | awk 'NF == 2 {
  name = $2; gsub(/\./, "\\.", name)
  printf "s#spec/%s#spec/%s/%s#g;", name, $1, $2
}')
script="${script}s#spec/nginx_chaos_\\*_spec\\.lua#spec/nginx/nginx_chaos_*_spec.lua#g"
git grep -lI -E 'spec/[A-Za-z0-9_*]+_spec\.lua' -- . ':!scripts/spec-layout.sh' |
  while read -r file; do
    sed -i -E "$script" "$file"
  done
echo "spec-layout.sh: every spec file is in its folder (spec/README.md)"
