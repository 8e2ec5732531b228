# The gateway's security group: in only from the job tasks' security groups
# on the mTLS port; out to the control plane and to egress_cidr_blocks on
# egress_ports. Terraform removes AWS's default allow-all egress rule.

locals {
  egress = {
    for pair in setproduct(var.egress_cidr_blocks, var.egress_ports) :
    "${pair[0]}:${pair[1]}" => { cidr = pair[0], port = pair[1] }
  }
}

resource "aws_security_group" "gateway" {
  name_prefix = "${local.name}-"
  description = "cordon-egress gateway: in from Cordon job tasks on ${var.gateway_port}; out to cordon-xds and the allowlisted ports"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = local.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "clients" {
  for_each = toset(var.client_security_group_ids)

  security_group_id            = aws_security_group.gateway.id
  description                  = "Cordon job task (sidecar mTLS)"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = var.gateway_port
  to_port                      = var.gateway_port
}

resource "aws_vpc_security_group_egress_rule" "xds" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "cordon-xds (ADS over mTLS)"
  referenced_security_group_id = var.xds_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = var.xds_port
  to_port                      = var.xds_port
}

resource "aws_vpc_security_group_egress_rule" "internet" {
  for_each = local.egress

  security_group_id = aws_security_group.gateway.id
  description       = "allowlisted destinations"
  cidr_ipv4         = each.value.cidr
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
}
