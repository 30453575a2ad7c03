# Each output named after a serve setting holds that setting's value, so a
# server run elsewhere (or a second deployment) can be pointed at this pool
# and table: `notes-server serve --issuer "$(terraform output -raw issuer)" ...`.

output "issuer" {
  description = "--issuer / NOTES_ISSUER: the exact `iss` of the pool's tokens (https://cognito-idp.REGION.amazonaws.com/POOL_ID)."
  value       = local.issuer
}

output "jwks_url" {
  description = "--jwks-url / NOTES_JWKS_URL: the pool's signing keys (also the server's default for this issuer)."
  value       = local.jwks_url
}

output "client_ids" {
  description = "--client-ids / NOTES_CLIENT_IDS: every app client of the pool (the user client first)."
  value       = local.auth_config_vars.client_ids
}

output "read_scopes" {
  description = "--read-scopes / NOTES_READ_SCOPES for machine tokens: the resource server's read scope."
  value       = local.read_scope
}

output "write_scopes" {
  description = "--write-scopes / NOTES_WRITE_SCOPES for machine tokens: the resource server's write scope."
  value       = local.write_scope
}

output "table_name" {
  description = "--table / NOTES_TABLE."
  value       = aws_dynamodb_table.notes.name
}

output "aws_region" {
  description = "--aws-region / NOTES_AWS_REGION."
  value       = local.region
}

output "auth_config" {
  description = "--auth-config / NOTES_AUTH_CONFIG: the rendered TOML the service runs with (user and machine scope policies, groups, certificate bindings)."
  value       = local.auth_config
}

output "server_environment" {
  description = "The NOTES_* environment of the notes container (file settings point into the task's run volume)."
  value       = local.server_environment
}

# --- Cognito, for clients --------------------------------------------------

output "user_pool_id" {
  description = "Id of the Cognito user pool."
  value       = aws_cognito_user_pool.this.id
}

output "user_pool_arn" {
  description = "ARN of the Cognito user pool."
  value       = aws_cognito_user_pool.this.arn
}

output "token_endpoint" {
  description = "OAuth 2.0 token endpoint for machine clients (client_credentials): https://DOMAIN.auth.REGION.amazoncognito.com/oauth2/token."
  value       = local.token_endpoint
}

output "cognito_endpoint" {
  description = "Cognito API endpoint for user sign-in (`notes login --cognito-endpoint`)."
  value       = "https://cognito-idp.${local.region}.amazonaws.com/"
}

output "user_client_id" {
  description = "The user app client (USER_PASSWORD_AUTH, SRP, refresh; no secret): `notes login --client-id`."
  value       = aws_cognito_user_pool_client.user.id
}

output "machine_client_ids" {
  description = "Machine app client ids by name (client_credentials)."
  value       = local.machine_client_ids
}

output "machine_client_secrets" {
  description = "Machine app client secrets by name. Cognito generates them and they are in the Terraform state: protect the state."
  value       = { for name, client in aws_cognito_user_pool_client.machine : name => client.client_secret }
  sensitive   = true
}

output "scopes" {
  description = "Scope strings by access level: read (GetNote, ListNotes) and write (CreateNote, UpdateNote, DeleteNote)."
  value       = local.scope_by_name
}

# --- Resources ---------------------------------------------------------------

output "table_arn" {
  description = "ARN of the notes table."
  value       = aws_dynamodb_table.notes.arn
}

output "endpoint" {
  description = "Service endpoint for clients (NOTES_ENDPOINT of the `notes` CLI); the server certificate must name this host (or a DNS alias of it)."
  value       = "https://${aws_lb.this.dns_name}:${var.listener_port}"
}

output "load_balancer_dns_name" {
  description = "DNS name of the Network Load Balancer: put it in the server certificate (`notes-server certs server NAME --dns ...`)."
  value       = aws_lb.this.dns_name
}

output "load_balancer_zone_id" {
  description = "Hosted zone of the Network Load Balancer, for a Route 53 alias record."
  value       = aws_lb.this.zone_id
}

output "ecr_repository_url" {
  description = "ECR repository to push the notes-server image to (tag it var.image_tag)."
  value       = aws_ecr_repository.notes.repository_url
}

output "cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.notes.name
}

output "secret_arns" {
  description = "Secrets Manager secrets whose values you put before the service can start, by content (TLS_CERT, TLS_KEY, CLIENT_CA, CLIENT_CRL, PAGE_TOKEN_KEY)."
  value       = { for name, secret in aws_secretsmanager_secret.run_file : name => secret.arn }
}

output "log_group_name" {
  description = "CloudWatch log group of the service."
  value       = aws_cloudwatch_log_group.this.name
}

output "task_role_arn" {
  description = "IAM role notes-server runs as (DynamoDB on the table only)."
  value       = aws_iam_role.task.arn
}

output "init_table_policy_arn" {
  description = "IAM policy for running `notes-server init-table` against this table; attach it to the role that runs it."
  value       = aws_iam_policy.init_table.arn
}

output "admin_port" {
  description = "Port of the tasks' admin listener (NOTES_ADMIN_LISTEN, plain HTTP): /readyz, which the load balancer's health check asks, /livez and /metrics. Only the load balancer's security group may reach it."
  value       = var.admin_port
}

output "service_security_group_id" {
  description = "Security group of the tasks. It admits the gRPC port and the admin port from the load balancer only; to scrape /metrics, add an ingress rule on admin_port from your Prometheus's security group."
  value       = aws_security_group.service.id
}
