# Shared facts and the names every other file builds on.

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  log_group_name = "/ecs/${var.name}"

  # The container that runs notes-server and the init container that writes
  # its files (see ecs.tf).
  server_container    = "notes"
  run_files_container = "run-files"
}
