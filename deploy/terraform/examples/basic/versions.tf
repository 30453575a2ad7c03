terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.50"
    }
  }

  # Keep the state remote and encrypted in real use: it holds the machine
  # clients' secrets. For example:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "notes/terraform.tfstate"
  #   region       = "eu-west-1"
  #   encrypt      = true
  #   use_lockfile = true
  # }
}
