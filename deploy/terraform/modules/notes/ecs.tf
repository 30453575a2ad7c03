# The service: Fargate tasks of two containers, "run-files" (writes the
# server's files, see secrets.tf) then "notes" (notes-server serve), behind
# the Network Load Balancer (network.tf).
#
# notes-server is configured only through NOTES_* variables built below from
# this module's own resources; tests/deploy/test_consistency.py checks that
# every name is a setting `notes-server serve --help` lists.

locals {
  # --- notes-server serve settings (see `notes-server serve --help`) ---------
  #
  # NOTES_ADMIN_LISTEN: the admin listener (plain HTTP: /readyz, /livez,
  # /metrics; no notes, no tokens) on every interface of the task, because
  # the load balancer's health checks come from outside it. Its security
  # group rule admits only the load balancer (network.tf).

  server_env_base = {
    NOTES_LISTEN              = "0.0.0.0:${var.container_port}"
    NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.admin_port}"
    NOTES_LOG_FORMAT          = "json"
    NOTES_TLS_CERT            = local.run_files.TLS_CERT
    NOTES_TLS_KEY             = local.run_files.TLS_KEY
    NOTES_CLIENT_CA           = local.run_files.CLIENT_CA
    NOTES_PAGE_TOKEN_KEY_FILE = local.run_files.PAGE_TOKEN_KEY
    NOTES_GRACE_PERIOD_SECS   = tostring(var.grace_period_secs)
    NOTES_STORE               = "dynamodb"
    NOTES_TABLE               = aws_dynamodb_table.notes.name
    NOTES_AWS_REGION          = local.region
  }

  server_env_crl = {
    NOTES_CLIENT_CRL = local.run_files.CLIENT_CRL
  }

  server_env_identities = {
    NOTES_ALLOWED_CLIENT_IDENTITIES = join(",", var.allowed_client_identities)
  }

  # Token checks: the rendered auth config (users and machines, see
  # outputs.tf's auth_config) ...
  server_env_auth_config = {
    NOTES_AUTH_CONFIG = local.run_files.AUTH_CONFIG
  }

  # ... or one issuer by flags, whose one scope policy only machine tokens
  # can satisfy (user tokens carry aws.cognito.signin.user.admin only).
  server_env_auth_flags = {
    NOTES_ISSUER       = local.issuer
    NOTES_JWKS_URL     = local.jwks_url
    NOTES_CLIENT_IDS   = join(",", values(local.machine_client_ids))
    NOTES_READ_SCOPES  = local.read_scope
    NOTES_WRITE_SCOPES = local.write_scope
  }

  server_environment = merge(
    local.server_env_base,
    var.enable_client_crl ? local.server_env_crl : {},
    length(var.allowed_client_identities) > 0 ? local.server_env_identities : {},
    var.use_auth_config ? local.server_env_auth_config : local.server_env_auth_flags,
  )

  # --- the run-files init container's inputs -------------------------------

  run_files_environment = merge(
    { for name in local.written_files : "${name}_FILE" => local.run_files[name] },
    var.use_auth_config ? { AUTH_CONFIG = local.auth_config } : {},
    { RUN_OWNER = "65532:65532" },
  )

  log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.this.name
      awslogs-region        = local.region
      awslogs-stream-prefix = var.name
    }
  }

  run_files_container_definition = {
    name      = local.run_files_container
    image     = var.init_image
    essential = false
    # Root only to chown the files to the server's user: a Fargate bind-mount
    # volume starts as a root-owned 0755 directory.
    user                   = "0"
    command                = ["sh", "-c", file("${path.module}/files/write-run-files.sh")]
    readonlyRootFilesystem = true
    environment            = [for k, v in local.run_files_environment : { name = k, value = v }]
    secrets                = [for name in local.secret_contents : { name = name, valueFrom = aws_secretsmanager_secret.run_file[name].arn }]
    mountPoints            = [{ sourceVolume = "run", containerPath = local.run_dir, readOnly = false }]
    linuxParameters = {
      capabilities = {
        drop = ["AUDIT_WRITE", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
      }
    }
    logConfiguration = local.log_configuration
  }

  server_container_definition = {
    name      = local.server_container
    image     = "${aws_ecr_repository.notes.repository_url}:${var.image_tag}"
    essential = true
    # distroless "nonroot"; the image's ENTRYPOINT is notes-server.
    user                   = "65532:65532"
    command                = ["serve"]
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = var.container_port, protocol = "tcp" }, { containerPort = var.admin_port, protocol = "tcp" }]
    environment            = [for k, v in local.server_environment : { name = k, value = v }]
    mountPoints            = [{ sourceVolume = "run", containerPath = local.run_dir, readOnly = true }]
    dependsOn              = [{ containerName = local.run_files_container, condition = "SUCCESS" }]
    # SIGTERM starts the drain; SIGKILL follows after the grace period + 10 s.
    stopTimeout = var.grace_period_secs + 10
    linuxParameters = {
      capabilities = { drop = ["ALL"] }
    }
    # No container health check: the image has no shell or curl. The load
    # balancer's HTTP health check of /readyz on the admin port (network.tf)
    # decides.
    logConfiguration = local.log_configuration
  }
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

resource "aws_ecs_task_definition" "notes" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Task-local (ephemeral) storage shared by the two containers.
  volume {
    name = "run"
  }

  container_definitions = jsonencode([
    local.run_files_container_definition,
    local.server_container_definition,
  ])

  tags = var.tags
}

resource "aws_ecs_service" "notes" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.notes.arn
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  desired_count    = var.desired_count

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  # /readyz answers 200 only once the pool's token keys are loaded and the
  # table answered a probe: failed health checks of a new task count only
  # after this long.
  health_check_grace_period_seconds = 60

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.service_subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.notes.arn
    container_name   = local.server_container
    container_port   = var.container_port
  }

  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  # The image has no shell: there is nothing to exec into.
  enable_execute_command = false

  # autoscaling.tf owns the count after creation.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.grpc, aws_iam_role_policy.task_dynamodb]

  tags = var.tags
}
