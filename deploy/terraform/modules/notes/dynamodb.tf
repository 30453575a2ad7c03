# The notes table, exactly as `notes-server init-table` creates it
# (server/src/store/dynamodb/table.rs): userId (S, HASH) + noteId (S, RANGE),
# on-demand billing, TTL on expiresAt (idempotency records expire). Terraform
# owns it here, with point-in-time recovery and deletion protection that
# init-table does not set; `serve` checks the key schema at start-up.
# tests/deploy/test_consistency.py checks this block against the Rust code.

resource "aws_dynamodb_table" "notes" {
  #checkov:skip=CKV_AWS_119:AWS managed key (aws/dynamodb) keeps table access to the README's DynamoDB-only IAM list; a customer key adds key-policy grants per principal
  name         = var.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "userId"
  range_key    = "noteId"

  attribute {
    name = "userId"
    type = "S"
  }

  attribute {
    name = "noteId"
    type = "S"
  }

  ttl {
    attribute_name = "expiresAt"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  deletion_protection_enabled = true

  tags = var.tags
}
