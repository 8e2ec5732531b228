# The task's security group: the network is what enforces egress on
# Fargate (DESIGN.md: "the task's subnet has no NAT, its security group
# allows only the VPC endpoints and the central cordon-egress gateway").
# No ingress rule exists (seeds/000: "No inbound connections to job
# containers"). Terraform deletes the allow-all egress rule AWS puts on
# every new group, so the rules below are the whole policy. Every rule
# names a security group or a managed prefix list, never a CIDR.
#
# Security groups do not filter the VPC's Amazon DNS resolver or the task
# metadata endpoint (169.254.170.2): DNS queries can leave through the
# resolver whatever this group says. Pair it with a Route 53 Resolver DNS
# Firewall that blocks everything but the allowlisted names (deploy/README.md).

resource "aws_security_group" "task" {
  name_prefix = "${local.family}-"
  description = "Cordon job ${var.org_slug}/${var.job_name}: egress only to the cordon-egress gateway, Cordon control plane and VPC endpoints; no ingress"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = local.family })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "gateway" {
  security_group_id            = aws_security_group.task.id
  description                  = "cordon-egress gateway (mTLS)"
  referenced_security_group_id = var.gateway_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = var.gateway_port
  to_port                      = var.gateway_port
}

resource "aws_vpc_security_group_egress_rule" "control_plane" {
  for_each = { for e in var.control_plane_endpoints : e.name => e }

  security_group_id            = aws_security_group.task.id
  description                  = "Cordon ${each.key} (mTLS)"
  referenced_security_group_id = each.value.security_group_id
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "interface_endpoints" {
  for_each = toset(var.vpc_endpoint_security_group_ids)

  security_group_id            = aws_security_group.task.id
  description                  = "interface VPC endpoint (HTTPS)"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_egress_rule" "gateway_endpoints" {
  for_each = toset(var.vpc_endpoint_prefix_list_ids)

  security_group_id = aws_security_group.task.id
  description       = "gateway VPC endpoint prefix list (HTTPS)"
  prefix_list_id    = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}
