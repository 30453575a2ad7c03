# The --auth-config file notes-server gets (NOTES_AUTH_CONFIG), rendered from
# this module's Cognito resources. Format: server/src/config/auth.rs; the
# tests render templates/auth.toml.tftpl and start the real server on it.

locals {
  auth_config_vars = {
    issuer = local.issuer
    # Users' tokens come from the user client, machines' from theirs.
    client_ids      = concat([aws_cognito_user_pool_client.user.id], values(local.machine_client_ids))
    read_scope      = local.read_scope
    write_scope     = local.write_scope
    required_groups = var.user_required_groups
    bindings        = { for identity, clients in var.certificate_bindings : identity => [for c in clients : local.machine_client_ids[c]] }
  }

  auth_config = templatefile("${path.module}/templates/auth.toml.tftpl", local.auth_config_vars)
}
