# One Cordon job as an ECS Fargate task definition (DESIGN.md "How a task
# runs (Fargate)"): the cordon-sidecar container starts first, gets the
# task's SPIFFE identity and secrets, copies its binary into the shared
# volume and turns HEALTHY; then the job container starts with the shim as
# its entrypoint. Both run read-only, non-root, with every capability
# dropped and no privileged mode (seeds/000 "Container Isolation").

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  family = "cordon-${var.env}-${var.org_slug}-${var.job_name}"

  # The shared volume: the agent writes bin/cordon-sidecar and
  # run/agent.sock there; the job container mounts it read-only.
  shared_volume = "cordon"
  shared_path   = "/cordon"
  shim          = "${local.shared_path}/bin/cordon-sidecar"

  spire_volume = "spire-agent-socket"

  # The agent's on-disk queue of undelivered reports: the sidecar's alone
  # (the job can write nothing the agent later reads).
  spool_volume = "cordon-spool"
  spool_path   = "/var/lib/cordon/spool"
  user         = "${var.task_uid}:${var.task_uid}"

  # Fargate allows adding only SYS_PTRACE; Cordon adds nothing and drops
  # everything Docker grants by default (CHOWN, NET_RAW, SETUID, ...).
  linux_parameters = {
    capabilities = {
      add  = []
      drop = ["ALL"]
    }
  }

  log_configuration = {
    logDriver = "awslogs"
    options = {
      "awslogs-group"         = aws_cloudwatch_log_group.this.name
      "awslogs-region"        = data.aws_region.current.region
      "awslogs-stream-prefix" = "cordon"
    }
  }

  # job_writable_paths -> one ephemeral task volume each.
  scratch_volumes = { for i, p in var.job_writable_paths : "job-scratch-${i}" => p }

  sidecar_container = {
    name      = "cordon-sidecar"
    image     = var.sidecar_image
    essential = true
    command = concat(
      [
        "agent",
        "--env", var.env,
        "--shared-dir", local.shared_path,
        "--job-uid", tostring(var.task_uid),
        "--xds", var.xds_address,
        "--gateway", var.gateway_address,
        "--spool-dir", local.spool_path,
      ],
      length(var.secret_names) > 0 ? ["--secrets", join(",", var.secret_names)] : [],
      var.dispatcher_url != null ? ["--dispatcher", var.dispatcher_url] : [],
    )
    user                   = local.user
    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters        = local.linux_parameters
    cpu                    = var.sidecar_cpu
    memory                 = var.sidecar_memory
    environment = [
      { name = "AWS_REGION", value = data.aws_region.current.region },
      { name = "SPIFFE_ENDPOINT_SOCKET", value = "unix://${var.spire_socket_dir}/agent.sock" },
    ]
    mountPoints = [
      { sourceVolume = local.shared_volume, containerPath = local.shared_path, readOnly = false },
      { sourceVolume = local.spire_volume, containerPath = var.spire_socket_dir, readOnly = true },
      { sourceVolume = local.spool_volume, containerPath = local.spool_path, readOnly = false },
    ]
    # The image has no shell or curl: the binary checks its own /healthz,
    # which answers 200 once identity, secrets, binary copy and handoff
    # socket are ready.
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/cordon-sidecar", "health"]
      interval    = 5
      timeout     = 3
      retries     = 3
      startPeriod = 10
    }
    stopTimeout      = 30
    logConfiguration = local.log_configuration
  }

  job_container = {
    name      = "job"
    image     = var.job_image
    essential = true
    # The shim fetches the job's env from the agent, removes the task's AWS
    # credential variables, and runs the command with output scrubbed.
    entryPoint             = [local.shim, "run", "--"]
    command                = var.job_command
    user                   = local.user
    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters        = local.linux_parameters
    dependsOn = [
      { containerName = "cordon-sidecar", condition = "HEALTHY" },
    ]
    environment = [for k, v in var.job_environment : { name = k, value = v }]
    mountPoints = concat(
      [{ sourceVolume = local.shared_volume, containerPath = local.shared_path, readOnly = true }],
      [for v, p in local.scratch_volumes : { sourceVolume = v, containerPath = p, readOnly = false }],
    )
    stopTimeout      = 30
    logConfiguration = local.log_configuration
  }

  container_definitions = [local.sidecar_container, local.job_container]
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/cordon/${var.env}/${var.org_slug}/${var.job_name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_ecs_task_definition" "this" {
  family                   = local.family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.cpu)
  memory                   = tostring(var.memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(local.container_definitions)

  # pid_mode and ipc_mode stay unset: each container keeps its own PID and
  # IPC namespace, so the job cannot see or signal the agent's processes.

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = local.shared_volume
  }

  volume {
    name = local.spire_volume
  }

  volume {
    name = local.spool_volume
  }

  dynamic "volume" {
    for_each = local.scratch_volumes
    content {
      name = volume.key
    }
  }

  lifecycle {
    precondition {
      condition     = var.sidecar_memory < var.memory && var.sidecar_cpu < var.cpu
      error_message = "sidecar_cpu and sidecar_memory must leave room for the job within the task's cpu and memory."
    }
  }

  tags = var.tags
}
