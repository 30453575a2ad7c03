# ---------------------------------------------------------------------------
# Naming
# ---------------------------------------------------------------------------

variable "name" {
  description = "Name of the deployment: prefixes the user pool, cluster, service, roles, secrets, repository and log group."
  type        = string
  default     = "notes"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters of lower-case letters, digits and hyphens, starting with a letter (it prefixes resource names with their own length limits)."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes them."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

variable "vpc_id" {
  description = "VPC the service and its Network Load Balancer run in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "service_subnet_ids" {
  description = "Private subnets for the Fargate tasks (at least two, in different availability zones). They need a route to the internet (NAT) or VPC endpoints for ECR, S3, CloudWatch Logs, Secrets Manager and DynamoDB, and a NAT route for Cognito's JWKS and the init image."
  type        = list(string)

  validation {
    condition     = length(var.service_subnet_ids) >= 2 && alltrue([for s in var.service_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "service_subnet_ids must list at least two subnet ids (subnet-...)."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the Network Load Balancer: public subnets when load_balancer_internal is false, else private ones."
  type        = list(string)

  validation {
    condition     = length(var.load_balancer_subnet_ids) >= 2 && alltrue([for s in var.load_balancer_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "load_balancer_subnet_ids must list at least two subnet ids (subnet-...)."
  }
}

variable "load_balancer_internal" {
  description = "Whether the Network Load Balancer is internal (reachable only inside the VPC and peered networks)."
  type        = bool
  default     = true
}

variable "allowed_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to open connections to the service port. Every caller still needs a client certificate from the configured CA and a Cognito access token."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "allowed_cidr_blocks must list at least one valid IPv4 CIDR block."
  }
}

variable "listener_port" {
  description = "TCP port of the Network Load Balancer's listener (passed through to the service, TLS included)."
  type        = number
  default     = 50051

  validation {
    condition     = var.listener_port >= 1 && var.listener_port <= 65535 && floor(var.listener_port) == var.listener_port
    error_message = "listener_port must be a port number (1-65535)."
  }
}

variable "container_port" {
  description = "Port notes-server listens on inside the task (NOTES_LISTEN)."
  type        = number
  default     = 50051

  validation {
    condition     = var.container_port >= 1024 && var.container_port <= 65535 && floor(var.container_port) == var.container_port
    error_message = "container_port must be an unprivileged port (1024-65535): the server runs as a non-root user."
  }
}

variable "admin_port" {
  description = "Port of notes-server's plain-HTTP admin listener inside the task (NOTES_ADMIN_LISTEN): /readyz for the load balancer's health checks, /livez and /metrics. It carries no notes and no tokens; only the load balancer's security group may reach it, and no listener of the load balancer forwards to it."
  type        = number
  default     = 9464

  validation {
    condition     = var.admin_port >= 1024 && var.admin_port <= 65535 && floor(var.admin_port) == var.admin_port && var.admin_port != var.container_port
    error_message = "admin_port must be an unprivileged port (1024-65535) other than container_port: the server runs as a non-root user and serves the admin endpoints on a listener of their own."
  }
}

variable "load_balancer_deletion_protection" {
  description = "Deletion protection of the Network Load Balancer."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------
# Service
# ---------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the notes-server image in this module's ECR repository (tags are immutable: use a version or commit id)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid, immutable image tag (not \"latest\")."
  }
}

variable "init_image" {
  description = "Image of the run-files init container, which writes the server's files from Secrets Manager before it starts. It needs a POSIX sh, printf, chmod, chown and mv. Pin it by digest in production."
  type        = string
  default     = "public.ecr.aws/docker/library/busybox:1.37"

  validation {
    condition     = length(var.init_image) > 0 && !endswith(var.init_image, ":latest")
    error_message = "init_image must name an image with a fixed tag or digest."
  }
}

variable "cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Fargate task memory in MiB (must be a valid combination with cpu)."
  type        = number
  default     = 1024

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880 && var.memory % 512 == 0
    error_message = "memory must be a multiple of 512 MiB between 512 and 122880."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the tasks; the image must be built for it."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "desired_count" {
  description = "Tasks started on creation; afterwards CPU autoscaling owns the count."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count >= 0 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count must be a whole number >= 0."
  }
}

variable "min_capacity" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
  default     = 2

  validation {
    condition     = var.min_capacity >= 1 && floor(var.min_capacity) == var.min_capacity
    error_message = "min_capacity must be a whole number >= 1."
  }
}

variable "max_capacity" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 6

  validation {
    condition     = var.max_capacity >= var.min_capacity && floor(var.max_capacity) == var.max_capacity
    error_message = "max_capacity must be a whole number >= min_capacity."
  }
}

variable "cpu_target_percent" {
  description = "Average CPU utilisation the service's autoscaling aims for."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target_percent >= 10 && var.cpu_target_percent <= 90
    error_message = "cpu_target_percent must be between 10 and 90."
  }
}

variable "grace_period_secs" {
  description = "Seconds in-flight calls get to finish on shutdown (NOTES_GRACE_PERIOD_SECS); ECS waits 10 s longer before SIGKILL and the load balancer drains as long."
  type        = number
  default     = 20

  validation {
    condition     = var.grace_period_secs >= 1 && var.grace_period_secs <= 110 && floor(var.grace_period_secs) == var.grace_period_secs
    error_message = "grace_period_secs must be a whole number between 1 and 110 (Fargate stops a container at most 120 s after SIGTERM)."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch Logs keeps the service's logs (audit events included)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention period CloudWatch Logs supports (e.g. 30, 90, 365, 731)."
  }
}

variable "ecr_keep_images" {
  description = "Images the ECR repository keeps; older ones expire."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 1 && floor(var.ecr_keep_images) == var.ecr_keep_images
    error_message = "ecr_keep_images must be a whole number >= 1."
  }
}

# ---------------------------------------------------------------------------
# Server settings
# ---------------------------------------------------------------------------

variable "use_auth_config" {
  description = "Configure token checks with the rendered --auth-config file (user and machine tokens, groups, certificate bindings). When false, the --issuer/--client-ids/--read-scopes/--write-scopes flags are used, which apply one scope policy to every token and so admit only the machine clients."
  type        = bool
  default     = true

  validation {
    condition     = var.use_auth_config || length(var.machine_clients) > 0
    error_message = "use_auth_config = false admits machine clients only: declare at least one in machine_clients."
  }
}

variable "allowed_client_identities" {
  description = "Client-certificate identities (URI SAN, else DNS SAN) allowed to call (NOTES_ALLOWED_CLIENT_IDENTITIES); empty allows any certificate from the client CA."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for i in var.allowed_client_identities : length(trimspace(i)) > 0 && !strcontains(i, ",")])
    error_message = "allowed_client_identities entries must be non-blank and contain no comma."
  }
}

variable "enable_client_crl" {
  description = "Whether the service checks a CRL of the client CA (a Secrets Manager secret holding `notes-server certs`' crl.pem)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------
# DynamoDB
# ---------------------------------------------------------------------------

variable "table_name" {
  description = "Name of the notes table (NOTES_TABLE)."
  type        = string
  default     = "notes"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of letters, digits, '_', '-' and '.'."
  }
}

# ---------------------------------------------------------------------------
# Cognito
# ---------------------------------------------------------------------------

variable "cognito_domain_prefix" {
  description = "Prefix of the user pool's Cognito domain (https://PREFIX.auth.REGION.amazoncognito.com), which serves /oauth2/token for machine clients. Must be unique in the region."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", var.cognito_domain_prefix)) && length(regexall("aws|amazon|cognito", var.cognito_domain_prefix)) == 0
    error_message = "cognito_domain_prefix must be 1-63 lower-case letters, digits and hyphens, and must not contain \"aws\", \"amazon\" or \"cognito\"."
  }
}

variable "mfa_configuration" {
  description = "Multi-factor authentication of the user pool (software tokens): OFF, OPTIONAL or ON."
  type        = string
  default     = "OPTIONAL"

  validation {
    condition     = contains(["OFF", "OPTIONAL", "ON"], var.mfa_configuration)
    error_message = "mfa_configuration must be OFF, OPTIONAL or ON."
  }
}

variable "password_minimum_length" {
  description = "Minimum length of user passwords (upper, lower, digit and symbol are always required)."
  type        = number
  default     = 14

  validation {
    condition     = var.password_minimum_length >= 8 && var.password_minimum_length <= 99
    error_message = "password_minimum_length must be between 8 and 99."
  }
}

variable "user_access_token_validity_minutes" {
  description = "Lifetime of user access tokens, in minutes."
  type        = number
  default     = 60

  validation {
    condition     = var.user_access_token_validity_minutes >= 5 && var.user_access_token_validity_minutes <= 1440
    error_message = "user_access_token_validity_minutes must be between 5 and 1440."
  }
}

variable "user_id_token_validity_minutes" {
  description = "Lifetime of user ID tokens, in minutes."
  type        = number
  default     = 60

  validation {
    condition     = var.user_id_token_validity_minutes >= 5 && var.user_id_token_validity_minutes <= 1440
    error_message = "user_id_token_validity_minutes must be between 5 and 1440."
  }
}

variable "user_refresh_token_validity_days" {
  description = "Lifetime of user refresh tokens, in days."
  type        = number
  default     = 30

  validation {
    condition     = var.user_refresh_token_validity_days >= 1 && var.user_refresh_token_validity_days <= 3650
    error_message = "user_refresh_token_validity_days must be between 1 and 3650."
  }
}

variable "user_required_groups" {
  description = "If set, user tokens must belong to one of these Cognito groups (created here); machine tokens are not affected. Needs use_auth_config."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for g in var.user_required_groups : can(regex("^[\\w+=,.@-]{1,128}$", g))])
    error_message = "user_required_groups entries must be valid Cognito group names."
  }

  validation {
    condition     = length(var.user_required_groups) == 0 || var.use_auth_config
    error_message = "user_required_groups needs use_auth_config = true."
  }
}

variable "machine_clients" {
  description = "Machine (client-credentials) app clients by name, each with the scopes it may request: \"read\" (GetNote, ListNotes) and/or \"write\" (CreateNote, UpdateNote, DeleteNote), and its access-token lifetime."
  type = map(object({
    scopes                        = list(string)
    access_token_validity_minutes = optional(number, 60)
  }))
  default = {}

  validation {
    condition     = alltrue([for name, c in var.machine_clients : can(regex("^[a-z0-9][a-z0-9-]{0,40}$", name))])
    error_message = "machine_clients names must be 1-41 lower-case letters, digits and hyphens."
  }

  validation {
    condition     = alltrue([for c in values(var.machine_clients) : length(c.scopes) > 0 && alltrue([for s in c.scopes : contains(["read", "write"], s)])])
    error_message = "machine_clients scopes must be a non-empty list of \"read\" and \"write\"."
  }

  validation {
    condition     = alltrue([for c in values(var.machine_clients) : c.access_token_validity_minutes >= 5 && c.access_token_validity_minutes <= 1440])
    error_message = "machine_clients access_token_validity_minutes must be between 5 and 1440."
  }
}

variable "certificate_bindings" {
  description = "Certificate identity (URI SAN, else DNS SAN) => names of machine_clients whose tokens that certificate may present ([[binding]] in the auth config). Needs use_auth_config."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue(flatten([for identity, clients in var.certificate_bindings : [for c in clients : contains(keys(var.machine_clients), c)]]))
    error_message = "certificate_bindings may only name clients declared in machine_clients."
  }

  validation {
    condition     = length(var.certificate_bindings) == 0 || var.use_auth_config
    error_message = "certificate_bindings needs use_auth_config = true."
  }
}
