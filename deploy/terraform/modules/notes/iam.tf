# Roles of the task. The task role (what notes-server's AWS SDK uses) may call
# exactly the DynamoDB actions the server calls, on exactly the notes table;
# tests/deploy/test_consistency.py derives that list from the Rust code
# (server/src/store/dynamodb/) and compares. CreateNote with a request_id is a
# TransactWriteItems of two puts: IAM has no action of its own for it and
# authorises each put as dynamodb:PutItem. DescribeTimeToLive is for
# `notes-server check`, the pre-flight run with the task's role.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# --- task role: notes-server itself ---------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  description        = "notes-server: the DynamoDB actions it calls on its table, nothing else"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "task_dynamodb" {
  statement {
    sid    = "NotesTable"
    effect = "Allow"
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:DescribeTimeToLive", # notes-server check, run as the task
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:Query",
      "dynamodb:UpdateItem",
    ]
    resources = [aws_dynamodb_table.notes.arn]
  }
}

resource "aws_iam_role_policy" "task_dynamodb" {
  name   = "dynamodb"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task_dynamodb.json
}

# --- execution role: ECS pulling the images, writing logs, reading secrets --

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  description        = "ECS for ${var.name}: image pulls, logs, the run-files secrets"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secrets" {
  statement {
    sid       = "RunFileSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [for s in aws_secretsmanager_secret.run_file : s.arn]
  }

  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "execution_secrets" {
  name   = "run-file-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution_secrets.json
}

# --- init-table ------------------------------------------------------------
#
# Terraform owns the table here, so the service never runs init-table. This
# policy is for whoever runs `notes-server init-table` against this account
# (e.g. to check the table from a workstation or CI role): attach it there.
# Its actions are what init-table calls (CreateTable, UpdateTimeToLive, and
# DescribeTable while it waits and checks), derived from the code by the tests.

data "aws_iam_policy_document" "init_table" {
  statement {
    sid    = "InitTable"
    effect = "Allow"
    actions = [
      "dynamodb:CreateTable",
      "dynamodb:DescribeTable",
      "dynamodb:UpdateTimeToLive",
    ]
    resources = [aws_dynamodb_table.notes.arn]
  }
}

resource "aws_iam_policy" "init_table" {
  name        = "${var.name}-init-table"
  description = "notes-server init-table on the ${var.table_name} table"
  policy      = data.aws_iam_policy_document.init_table.json

  tags = var.tags
}
