terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x: data.aws_region exposes `region`; aws_vpc_security_group_*_rule.
      version = ">= 6.0, < 7.0"
    }
  }
}
