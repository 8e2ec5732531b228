# The cordon-egress gateway as an ECS Fargate service: it authenticates
# each sidecar by its SVID (mTLS), applies that job's policy from cordon-xds
# and is the one place job traffic leaves the VPC. Hardened like the job
# task: read-only root, non-root, every capability dropped, not privileged.
# It calls no AWS API, so it has no task role.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  name         = "cordon-egress-${var.env}"
  spire_volume = "spire-agent-socket"

  gateway_container = {
    name      = "cordon-egress"
    image     = var.image
    essential = true
    command = [
      "serve",
      "--tls-listen", "0.0.0.0:${var.gateway_port}",
      "--xds", var.xds_address,
    ]
    user                   = "${var.uid}:${var.uid}"
    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters = {
      capabilities = {
        add  = []
        drop = ["ALL"]
      }
    }
    portMappings = [
      { containerPort = var.gateway_port, protocol = "tcp" },
    ]
    environment = [
      { name = "SPIFFE_ENDPOINT_SOCKET", value = "unix://${var.spire_socket_dir}/agent.sock" },
    ]
    mountPoints = [
      { sourceVolume = local.spire_volume, containerPath = var.spire_socket_dir, readOnly = true },
    ]
    stopTimeout = 30
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.this.name
        "awslogs-region"        = data.aws_region.current.region
        "awslogs-stream-prefix" = "cordon"
      }
    }
  }

  container_definitions = [local.gateway_container]
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/cordon/${var.env}/egress-gateway"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_ecs_task_definition" "this" {
  family                   = local.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.cpu)
  memory                   = tostring(var.memory)
  execution_role_arn       = aws_iam_role.execution.arn
  container_definitions    = jsonencode(local.container_definitions)

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = local.spire_volume
  }

  tags = var.tags
}

resource "aws_ecs_service" "this" {
  name            = local.name
  cluster         = var.cluster_arn
  task_definition = aws_ecs_task_definition.this.arn
  desired_count   = var.desired_count
  launch_type     = "FARGATE"

  # Replace tasks one at a time above full strength: a deploy never drops
  # below desired_count gateways.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.gateway.id]
    assign_public_ip = false
  }

  dynamic "service_registries" {
    for_each = var.service_registry_arn == null ? [] : [var.service_registry_arn]
    content {
      registry_arn = service_registries.value
    }
  }

  tags = var.tags
}
