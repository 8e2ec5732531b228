output "task_definition_arn" {
  description = "ARN (with revision) of the job's task definition."
  value       = aws_ecs_task_definition.this.arn
}

output "family" {
  description = "Task definition family: cordon-<env>-<org>-<job>."
  value       = aws_ecs_task_definition.this.family
}

output "task_role_arn" {
  description = "The task role (the sidecar's secrets read); never hand it to the job."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "The execution role (image pull, logs)."
  value       = aws_iam_role.execution.arn
}

output "security_group_id" {
  description = "The task's security group: list it in the gateway module's client_security_group_ids."
  value       = aws_security_group.task.id
}

output "log_group_name" {
  description = "CloudWatch Logs group of both containers."
  value       = aws_cloudwatch_log_group.this.name
}

output "network_configuration" {
  description = "awsvpcConfiguration for RunTask: the job subnets, the task security group, no public IP."
  value = {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = false
  }
}
