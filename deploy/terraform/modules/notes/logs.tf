# The service's logs (JSON lines: NOTES_LOG_FORMAT=json), audit events included, and
# the init container's.

resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn

  tags = var.tags
}
