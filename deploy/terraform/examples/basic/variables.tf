variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the deployment (prefix of every resource)."
  type        = string
  default     = "notes"
}

variable "image_tag" {
  description = "Tag of the notes-server image pushed to the module's ECR repository."
  type        = string
}

variable "cognito_domain_prefix" {
  description = "Globally unique (per region) prefix of the Cognito domain that serves /oauth2/token."
  type        = string
}

variable "vpc_id" {
  description = "Existing VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (with a NAT route) for the tasks."
  type        = list(string)
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the Network Load Balancer (public ones if it is internet-facing)."
  type        = list(string)
}

variable "load_balancer_internal" {
  description = "Whether the load balancer is internal."
  type        = bool
  default     = true
}

variable "allowed_cidr_blocks" {
  description = "Networks allowed to connect to the service port."
  type        = list(string)
}
