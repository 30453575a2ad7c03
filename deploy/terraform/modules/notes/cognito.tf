# The user pool whose tokens the service verifies, the resource server that
# defines the scopes it requires, the app clients, and the domain that serves
# /oauth2/token to machine clients.

resource "aws_cognito_user_pool" "this" {
  name                = var.name
  deletion_protection = "ACTIVE"

  username_attributes      = ["email"]
  auto_verified_attributes = ["email"]

  mfa_configuration = var.mfa_configuration

  dynamic "software_token_mfa_configuration" {
    for_each = var.mfa_configuration == "OFF" ? [] : [true]
    content {
      enabled = true
    }
  }

  password_policy {
    minimum_length                   = var.password_minimum_length
    require_lowercase                = true
    require_uppercase                = true
    require_numbers                  = true
    require_symbols                  = true
    temporary_password_validity_days = 3
  }

  # Users are invited by an administrator; there is no self sign-up.
  admin_create_user_config {
    allow_admin_create_user_only = true
  }

  account_recovery_setting {
    recovery_mechanism {
      name     = "verified_email"
      priority = 1
    }
  }

  tags = var.tags
}

# Scope strings are "<identifier>/<scope_name>": notes/read and notes/write,
# the defaults of `notes-server serve --read-scopes / --write-scopes`.
resource "aws_cognito_resource_server" "notes" {
  user_pool_id = aws_cognito_user_pool.this.id
  identifier   = "notes"
  name         = "notes"

  scope {
    scope_name        = "read"
    scope_description = "GetNote and ListNotes"
  }

  scope {
    scope_name        = "write"
    scope_description = "CreateNote, UpdateNote and DeleteNote"
  }
}

locals {
  read_scope  = "${aws_cognito_resource_server.notes.identifier}/read"
  write_scope = "${aws_cognito_resource_server.notes.identifier}/write"
  scope_by_name = {
    read  = local.read_scope
    write = local.write_scope
  }

  # The `iss` of every token the pool issues; endpoint is
  # "cognito-idp.<region>.amazonaws.com/<pool id>".
  issuer   = "https://${aws_cognito_user_pool.this.endpoint}"
  jwks_url = "${local.issuer}/.well-known/jwks.json"

  token_endpoint = "https://${aws_cognito_user_pool_domain.this.domain}.auth.${local.region}.amazoncognito.com/oauth2/token"

  machine_client_ids = { for name, client in aws_cognito_user_pool_client.machine : name => client.id }
}

# Serves https://<prefix>.auth.<region>.amazoncognito.com/oauth2/token.
resource "aws_cognito_user_pool_domain" "this" {
  domain       = var.cognito_domain_prefix
  user_pool_id = aws_cognito_user_pool.this.id
}

# People: sign in with USER_PASSWORD_AUTH (the `notes login` CLI) or SRP, and
# refresh. Public client, so no secret. Their access tokens carry the scope
# aws.cognito.signin.user.admin, which the auth config requires of user tokens.
resource "aws_cognito_user_pool_client" "user" {
  name         = "${var.name}-users"
  user_pool_id = aws_cognito_user_pool.this.id

  generate_secret = false
  explicit_auth_flows = [
    "ALLOW_USER_PASSWORD_AUTH",
    "ALLOW_USER_SRP_AUTH",
    "ALLOW_REFRESH_TOKEN_AUTH",
  ]
  prevent_user_existence_errors = "ENABLED"
  enable_token_revocation       = true

  access_token_validity  = var.user_access_token_validity_minutes
  id_token_validity      = var.user_id_token_validity_minutes
  refresh_token_validity = var.user_refresh_token_validity_days
  token_validity_units {
    access_token  = "minutes"
    id_token      = "minutes"
    refresh_token = "days"
  }
}

# Services: the client-credentials grant at the domain's /oauth2/token, with
# a generated secret, limited to the scopes each one was given.
resource "aws_cognito_user_pool_client" "machine" {
  for_each = var.machine_clients

  name         = "${var.name}-${each.key}"
  user_pool_id = aws_cognito_user_pool.this.id

  generate_secret                      = true
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_flows                  = ["client_credentials"]
  allowed_oauth_scopes                 = [for s in each.value.scopes : local.scope_by_name[s]]
  supported_identity_providers         = ["COGNITO"]
  explicit_auth_flows                  = ["ALLOW_REFRESH_TOKEN_AUTH"]
  prevent_user_existence_errors        = "ENABLED"
  enable_token_revocation              = true

  access_token_validity = each.value.access_token_validity_minutes
  token_validity_units {
    access_token = "minutes"
  }
}

# Groups that user tokens must belong to (required_groups in the auth config).
resource "aws_cognito_user_group" "required" {
  for_each = toset(var.user_required_groups)

  name         = each.value
  user_pool_id = aws_cognito_user_pool.this.id
  description  = "Users in this group may call ${var.name}."
}
