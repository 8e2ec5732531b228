# IAM for the task. On Fargate every container of a task gets the task
# role's credentials (the ECS agent sets AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
# in each), so the task role is also what the job could use. That is why
# it holds only the sidecar's narrow need (its org's secrets, read-only), why
# the shim strips the credential variables from the job's environment, and
# why the job's own AWS access comes from short-lived, dataset-scoped
# credentials the agent serves (issue 9), never from this role. No
# statement allows sts:AssumeRole (seeds/000: "No IAM role assumption").

locals {
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # /{env}/{org_slug}/{secret_name} (seeds/000 "Secrets Naming
  # Convention"). The trailing "/*" also matches the random suffix Secrets
  # Manager appends to every secret ARN; it cannot reach another org's path
  # because the org segment is fixed and followed by '/'.
  secrets_arn_pattern = "arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:/${var.env}/${var.org_slug}/*"

  ecs_tasks_assume_role_policy = {
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EcsTasksOfThisAccount"
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      # Confused-deputy guard: only ECS acting for this account.
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  }

  task_role_policy = {
    Version = "2012-10-17"
    Statement = concat(
      [{
        Sid      = "ReadOwnOrgSecrets"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [local.secrets_arn_pattern]
      }],
      # BatchGetSecretValue supports no resource-level permission: "*" is
      # the only Resource it accepts. Each secret in a batch is still
      # checked against GetSecretValue above, so this grants no secret.
      var.allow_batch_get_secrets ? [{
        Sid      = "BatchReadAuthorisedPerSecret"
        Effect   = "Allow"
        Action   = ["secretsmanager:BatchGetSecretValue"]
        Resource = ["*"]
      }] : [],
      length(var.secrets_kms_key_arns) > 0 ? [{
        Sid       = "DecryptOwnOrgSecretsViaSecretsManager"
        Effect    = "Allow"
        Action    = ["kms:Decrypt"]
        Resource  = var.secrets_kms_key_arns
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${local.region}.amazonaws.com" } }
      }] : [],
    )
  }

  execution_role_policy = {
    Version = "2012-10-17"
    Statement = concat(
      length(var.image_repository_arns) > 0 ? [
        {
          # GetAuthorizationToken supports no resource-level permission;
          # the token alone pulls nothing without the statement below.
          Sid      = "EcrLogin"
          Effect   = "Allow"
          Action   = ["ecr:GetAuthorizationToken"]
          Resource = ["*"]
        },
        {
          Sid      = "PullTaskImages"
          Effect   = "Allow"
          Action   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
          Resource = var.image_repository_arns
        },
      ] : [],
      [{
        Sid      = "WriteTaskLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
      }],
    )
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "cordon-exec-"
  description        = "ECS execution role of ${local.family}: pull its images, write its logs."
  assume_role_policy = jsonencode(local.ecs_tasks_assume_role_policy)
  tags               = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "cordon-execution"
  role   = aws_iam_role.execution.id
  policy = jsonencode(local.execution_role_policy)
}

resource "aws_iam_role" "task" {
  name_prefix        = "cordon-task-"
  description        = "Task role of ${local.family}: the sidecar reads /${var.env}/${var.org_slug}/* secrets; nothing for the job."
  assume_role_policy = jsonencode(local.ecs_tasks_assume_role_policy)
  tags               = var.tags
}

resource "aws_iam_role_policy" "task" {
  name   = "cordon-sidecar-secrets"
  role   = aws_iam_role.task.id
  policy = jsonencode(local.task_role_policy)
}
