# A complete deployment of the notes service into an existing VPC.
# See deploy/README.md for the steps around `terraform apply`.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Service   = "notes"
      ManagedBy = "terraform"
    }
  }
}

module "notes" {
  source = "../../modules/notes"

  name                  = var.name
  image_tag             = var.image_tag
  cognito_domain_prefix = var.cognito_domain_prefix

  vpc_id                   = var.vpc_id
  service_subnet_ids       = var.private_subnet_ids
  load_balancer_subnet_ids = var.load_balancer_subnet_ids
  load_balancer_internal   = var.load_balancer_internal
  allowed_cidr_blocks      = var.allowed_cidr_blocks

  # One service that reads and writes notes with its own certificate, which
  # may only present its own client's tokens.
  machine_clients = {
    billing = { scopes = ["read", "write"] }
    reports = { scopes = ["read"] }
  }
  certificate_bindings = {
    "spiffe://example.org/billing" = ["billing"]
  }
}
