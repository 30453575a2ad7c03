# A Network Load Balancer passing TCP through to the tasks: mutual TLS ends in
# notes-server (it needs the client certificate), so there is no TLS listener
# and no certificate on the load balancer.
#
# Its health checks are HTTP GET /readyz on the tasks' admin port
# (var.admin_port, NOTES_ADMIN_LISTEN), a plain-HTTP listener apart from the
# data plane that carries no notes and no tokens. No listener forwards to
# that port, and the tasks' security group admits it only from the load
# balancer's security group, so clients cannot reach it.

resource "aws_security_group" "load_balancer" {
  name        = "${var.name}-nlb"
  description = "${var.name} Network Load Balancer: the gRPC port from allowed networks"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-nlb" })
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_grpc" {
  for_each = toset(var.allowed_cidr_blocks)

  security_group_id = aws_security_group.load_balancer.id
  description       = "gRPC over mutual TLS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = var.listener_port
  to_port           = var.listener_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_service" {
  security_group_id            = aws_security_group.load_balancer.id
  description                  = "To the tasks' gRPC port (client traffic)"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.service.id
}

# The load balancer's security group applies to its health checks too.
resource "aws_vpc_security_group_egress_rule" "load_balancer_health_checks" {
  security_group_id            = aws_security_group.load_balancer.id
  description                  = "To the tasks' admin port (HTTP health checks of /readyz)"
  ip_protocol                  = "tcp"
  from_port                    = var.admin_port
  to_port                      = var.admin_port
  referenced_security_group_id = aws_security_group.service.id
}

resource "aws_security_group" "service" {
  name        = "${var.name}-service"
  description = "${var.name} tasks: gRPC and health checks from the load balancer; HTTPS out to AWS APIs and Cognito"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-service" })
}

resource "aws_vpc_security_group_ingress_rule" "service_from_load_balancer" {
  security_group_id            = aws_security_group.service.id
  description                  = "gRPC from the Network Load Balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.load_balancer.id
}

# The admin port only from the load balancer's security group: its health
# checks come from there, and clients, which reach the tasks only through the
# load balancer's listener, never get to this port.
resource "aws_vpc_security_group_ingress_rule" "service_health_checks" {
  security_group_id            = aws_security_group.service.id
  description                  = "HTTP health checks (/readyz on the admin port) from the Network Load Balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.admin_port
  to_port                      = var.admin_port
  referenced_security_group_id = aws_security_group.load_balancer.id
}

resource "aws_vpc_security_group_egress_rule" "service_https" {
  security_group_id = aws_security_group.service.id
  description       = "HTTPS to DynamoDB, Cognito JWKS, Secrets Manager, ECR and CloudWatch Logs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:NLB access logs record only TLS listeners; this one passes TCP through and notes-server writes an audit event per call
  name                             = "${var.name}-nlb"
  load_balancer_type               = "network"
  internal                         = var.load_balancer_internal
  subnets                          = var.load_balancer_subnet_ids
  security_groups                  = [aws_security_group.load_balancer.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.load_balancer_deletion_protection

  tags = var.tags
}

resource "aws_lb_target_group" "notes" {
  name        = "${var.name}-grpc"
  target_type = "ip"
  protocol    = "TCP"
  port        = var.container_port
  vpc_id      = var.vpc_id

  # The server drains for grace_period_secs after SIGTERM; keep connections
  # to a draining task that long.
  deregistration_delay = var.grace_period_secs + 5

  # The server's per-address caps (handshakes per IP) must see the clients'
  # own addresses, not the load balancer's few: with IP targets over TCP
  # this is off unless asked for. The service's security group still admits
  # only the load balancer's security group (an NLB with security groups is
  # referenced as the source even when client IPs are kept).
  preserve_client_ip = "true"

  # Traffic stays TCP passthrough on container_port; the health check asks
  # the admin listener instead. /readyz answers 200 only when every issuer's
  # token keys are loaded and the table answered the server's last probe
  # (every 5 s), and 503 (with what is not ready) otherwise and from the
  # moment a drain starts. Healthy after 2 passes 10 s apart; out after 3
  # failures (30 s), so one slow probe does not take a task out. ECS replaces
  # a task the target group reports unhealthy.
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = tostring(var.admin_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener" "grpc" {
  load_balancer_arn = aws_lb.this.arn
  port              = var.listener_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.notes.arn
  }

  tags = var.tags
}
