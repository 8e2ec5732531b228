output "security_group_id" {
  description = "The gateway's security group: pass it to modules/cordon-task as gateway_security_group_id."
  value       = aws_security_group.gateway.id
}

output "gateway_port" {
  description = "The mTLS port sidecars connect to (modules/cordon-task gateway_port)."
  value       = var.gateway_port
}

output "service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.this.name
}

output "task_definition_arn" {
  description = "ARN of the gateway's task definition."
  value       = aws_ecs_task_definition.this.arn
}

output "execution_role_arn" {
  description = "The execution role (image pull, logs)."
  value       = aws_iam_role.execution.arn
}
