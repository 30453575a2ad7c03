output "endpoint" {
  description = "Service endpoint for the notes CLI (NOTES_ENDPOINT)."
  value       = module.notes.endpoint
}

output "load_balancer_dns_name" {
  description = "Put this name in the server certificate."
  value       = module.notes.load_balancer_dns_name
}

output "ecr_repository_url" {
  description = "Push the image here."
  value       = module.notes.ecr_repository_url
}

output "secret_arns" {
  description = "Secrets to put values into before the service can start."
  value       = module.notes.secret_arns
}

output "issuer" {
  description = "Token issuer (NOTES_ISSUER)."
  value       = module.notes.issuer
}

output "token_endpoint" {
  description = "Where machine clients get tokens (client_credentials)."
  value       = module.notes.token_endpoint
}

output "user_client_id" {
  description = "App client for `notes login`."
  value       = module.notes.user_client_id
}

output "machine_client_ids" {
  description = "Machine client ids by name."
  value       = module.notes.machine_client_ids
}

output "machine_client_secrets" {
  description = "Machine client secrets by name."
  value       = module.notes.machine_client_secrets
  sensitive   = true
}

output "scopes" {
  description = "Scope strings (read, write)."
  value       = module.notes.scopes
}

output "auth_config" {
  description = "The --auth-config the service runs with."
  value       = module.notes.auth_config
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.notes.cluster_name
}

output "service_name" {
  description = "ECS service."
  value       = module.notes.service_name
}

output "table_name" {
  description = "DynamoDB table."
  value       = module.notes.table_name
}
