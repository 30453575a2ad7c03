# notes-server reads its TLS material, page-token key and auth config from
# files (NOTES_TLS_CERT, NOTES_TLS_KEY, NOTES_CLIENT_CA, NOTES_CLIENT_CRL,
# NOTES_PAGE_TOKEN_KEY_FILE, NOTES_AUTH_CONFIG), and its image has no shell.
# ECS injects Secrets Manager secrets only as environment variables, so the
# task runs a short-lived init container first (the conventional "init
# container + shared volume" pattern): ECS gives it the secrets as variables,
# it writes them to files on a task-local volume (files/write-run-files.sh),
# owned by the server's user with mode 0400, and exits; only then does the
# server container start, with that volume mounted read-only. Nothing is
# written to disk outside the task, and no secret enters the server's
# environment.
#
# Terraform creates the secrets but never their values, so no key reaches the
# Terraform state: put them with `aws secretsmanager put-secret-value` (see
# deploy/README.md), then redeploy the service to roll new values out.

locals {
  run_dir = "/run/notes"

  # Files in the run volume, by the init container's variable that holds the
  # content (the path is passed to it as <NAME>_FILE).
  run_files = {
    TLS_CERT       = "${local.run_dir}/server.pem"
    TLS_KEY        = "${local.run_dir}/server-key.pem"
    CLIENT_CA      = "${local.run_dir}/client-ca.pem"
    CLIENT_CRL     = "${local.run_dir}/client-crl.pem"
    PAGE_TOKEN_KEY = "${local.run_dir}/page-token-key"
    AUTH_CONFIG    = "${local.run_dir}/auth.toml"
  }

  # The contents that come from Secrets Manager, and what each one is.
  secret_descriptions = {
    TLS_CERT       = "Server certificate chain, PEM, leaf first (notes-server certs server NAME: NAME.pem)"
    TLS_KEY        = "Server private key, PEM (notes-server certs server NAME: NAME.key)"
    CLIENT_CA      = "CA bundle, PEM, that client certificates must chain to (notes-server certs init-ca: ca.pem)"
    CLIENT_CRL     = "CRL of the client CA, PEM (notes-server certs: crl.pem)"
    PAGE_TOKEN_KEY = "Page-token MAC key: at least 32 random bytes, as text (e.g. openssl rand -hex 32)"
  }
  secret_contents = var.enable_client_crl ? keys(local.secret_descriptions) : [for k in keys(local.secret_descriptions) : k if k != "CLIENT_CRL"]

  # What the init container writes: the secrets, and the auth config (not
  # secret: it is rendered here and passed as a plain variable).
  written_files = concat(local.secret_contents, var.use_auth_config ? ["AUTH_CONFIG"] : [])
}

resource "aws_secretsmanager_secret" "run_file" {
  for_each = toset(local.secret_contents)
  #checkov:skip=CKV2_AWS_57:Values come from notes-server certs and are rotated by issuing a new certificate or key and putting it (deploy/README.md); no Lambda rotation applies

  name                    = "${var.name}/${lower(replace(each.key, "_", "-"))}"
  description             = local.secret_descriptions[each.key]
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30

  tags = var.tags
}
