# Init container of the notes task (deploy/terraform/modules/notes/secrets.tf):
# writes each NAME's value to the path in NAME_FILE, for every NAME whose
# NAME_FILE is set, then exits. ECS fills the values from Secrets Manager (and
# AUTH_CONFIG from the rendered auth config); notes-server starts only after
# this succeeded, with the directory mounted read-only. Files are owned by
# RUN_OWNER (the server's user) with mode 0400 and written atomically.
set -eu
owner="${RUN_OWNER:-65532:65532}"
umask 077

put() { # put NAME PATH VALUE
  [ -n "$2" ] || return 0
  if [ -z "$3" ]; then
    echo "write-run-files: $1 is empty; put a value in its secret" >&2
    exit 1
  fi
  printf '%s' "$3" >"$2.tmp"
  chmod 0400 "$2.tmp"
  chown "$owner" "$2.tmp"
  mv -f "$2.tmp" "$2"
  echo "write-run-files: wrote $2"
}

put TLS_CERT "${TLS_CERT_FILE:-}" "${TLS_CERT:-}"
put TLS_KEY "${TLS_KEY_FILE:-}" "${TLS_KEY:-}"
put CLIENT_CA "${CLIENT_CA_FILE:-}" "${CLIENT_CA:-}"
put CLIENT_CRL "${CLIENT_CRL_FILE:-}" "${CLIENT_CRL:-}"
put PAGE_TOKEN_KEY "${PAGE_TOKEN_KEY_FILE:-}" "${PAGE_TOKEN_KEY:-}"
put AUTH_CONFIG "${AUTH_CONFIG_FILE:-}" "${AUTH_CONFIG:-}"
