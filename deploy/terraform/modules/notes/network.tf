# A Network Load Balancer passing TCP through to the tasks: mutual TLS ends in
# notes-server (it needs the client certificate), so there is no TLS listener
# and no certificate on the load balancer.

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
  description                  = "To the tasks' gRPC port (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.service.id
}

resource "aws_security_group" "service" {
  name        = "${var.name}-service"
  description = "${var.name} tasks: gRPC from the load balancer; HTTPS out to AWS APIs and Cognito"
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

  # TCP for now: a TCP connect only proves the listener is up. Switch to
  # protocol = "HTTP", path = "/readyz" on the admin port (its own port and a
  # security group rule) once the observability issue lands and the server
  # reports readiness (token keys loaded, table reachable).
  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
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
