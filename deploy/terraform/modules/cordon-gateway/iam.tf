# Only an execution role (pull the image, write logs): the gateway calls no
# AWS API, so the task has no task role and no credentials at all.

locals {
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  ecs_tasks_assume_role_policy = {
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EcsTasksOfThisAccount"
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  }

  execution_role_policy = {
    Version = "2012-10-17"
    Statement = concat(
      length(var.image_repository_arns) > 0 ? [
        {
          # GetAuthorizationToken supports no resource-level permission.
          Sid      = "EcrLogin"
          Effect   = "Allow"
          Action   = ["ecr:GetAuthorizationToken"]
          Resource = ["*"]
        },
        {
          Sid      = "PullGatewayImage"
          Effect   = "Allow"
          Action   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
          Resource = var.image_repository_arns
        },
      ] : [],
      [{
        Sid      = "WriteGatewayLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
      }],
    )
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "cordon-egress-exec-"
  description        = "ECS execution role of ${local.name}: pull its image, write its logs."
  assume_role_policy = jsonencode(local.ecs_tasks_assume_role_policy)
  tags               = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "cordon-execution"
  role   = aws_iam_role.execution.id
  policy = jsonencode(local.execution_role_policy)
}
