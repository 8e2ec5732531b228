# Inputs of the cordon-egress gateway service: the only task on the job
# network with a route out (DESIGN.md "How a task runs (Fargate)").

variable "env" {
  description = "Deployment environment (prod, staging, ...), used in names."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.env))
    error_message = "env must be 1-16 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "image" {
  description = "The cordon/egress image, pinned by tag or digest; ':latest' is refused."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9./_:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.image)) && !can(regex(":latest$", var.image))
    error_message = "image must name a repository with a tag or a sha256 digest, and not ':latest'."
  }
}

variable "cluster_arn" {
  description = "ECS cluster the service runs in."
  type        = string
}

variable "desired_count" {
  description = "Gateway replicas; at least 2 so one task's loss does not cut every job off (each holds every job's policy)."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count >= 2 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count must be a whole number, at least 2."
  }
}

variable "cpu" {
  description = "Task CPU units (Fargate sizes)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate task size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
  default     = 2048

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880 && floor(var.memory) == var.memory
    error_message = "memory must be a whole number of MiB from 512 to 122880."
  }
}

variable "uid" {
  description = "Numeric uid:gid the gateway runs as (non-root)."
  type        = number
  default     = 65532

  validation {
    condition     = var.uid > 0 && var.uid < 2147483647 && floor(var.uid) == var.uid
    error_message = "uid must be a positive integer: root is refused."
  }
}

variable "gateway_port" {
  description = "The mTLS listener sidecars connect to."
  type        = number
  default     = 8443

  validation {
    condition     = var.gateway_port >= 1024 && var.gateway_port <= 65535 && floor(var.gateway_port) == var.gateway_port
    error_message = "gateway_port must be an unprivileged TCP port (1024-65535): the gateway has no NET_BIND_SERVICE."
  }
}

variable "xds_address" {
  description = "cordon-xds HOST:PORT the gateway takes every job's policy from (ADS over mTLS)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9.-]+:[0-9]{1,5}$", var.xds_address))
    error_message = "xds_address must be HOST:PORT."
  }
}

variable "xds_security_group_id" {
  description = "Security group of cordon-xds, for the gateway's egress to it."
  type        = string

  validation {
    condition     = can(regex("^sg-[0-9a-f]+$", var.xds_security_group_id))
    error_message = "xds_security_group_id must be a security group ID (sg-...)."
  }
}

variable "xds_port" {
  description = "cordon-xds's ADS port."
  type        = number
  default     = 18000
}

variable "spire_socket_dir" {
  description = "Directory of the SPIRE agent's Workload API socket in the gateway container."
  type        = string
  default     = "/run/spire/sockets"
}

variable "vpc_id" {
  description = "VPC of the gateway and job subnets."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC ID (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Egress subnets of the gateway: private, with a NAT gateway route (unlike the job subnets)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && length([for s in var.subnet_ids : s if !can(regex("^subnet-[0-9a-f]+$", s))]) == 0
    error_message = "subnet_ids must hold at least one subnet ID (subnet-...)."
  }
}

variable "client_security_group_ids" {
  description = "Security groups of the job tasks (modules/cordon-task output security_group_id, or one shared group): the only sources allowed in, on gateway_port."
  type        = list(string)

  validation {
    condition     = length([for s in var.client_security_group_ids : s if !can(regex("^sg-[0-9a-f]+$", s))]) == 0
    error_message = "client_security_group_ids must be security group IDs (sg-...): the gateway accepts no CIDR sources."
  }
}

variable "egress_cidr_blocks" {
  description = "IPv4 destinations the gateway may reach. The allowlist is the real policy; this narrows the blast radius when the destinations are known."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.egress_cidr_blocks) > 0 && length([for c in var.egress_cidr_blocks : c if !can(regex("^([0-9]{1,3}\\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$", c))]) == 0
    error_message = "egress_cidr_blocks must be IPv4 CIDR blocks."
  }
}

variable "egress_ports" {
  description = "TCP ports the gateway may reach on egress_cidr_blocks (the union of the allowlists' ports)."
  type        = list(number)
  default     = [443]

  validation {
    condition     = length(var.egress_ports) > 0 && length([for p in var.egress_ports : p if p < 1 || p > 65535 || floor(p) != p]) == 0
    error_message = "egress_ports must be TCP ports (1-65535)."
  }
}

variable "service_registry_arn" {
  description = "Cloud Map service the gateway tasks register in (how sidecars find them). Null for none."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for the gateway's decision log."
  type        = number
  default     = 365
}

variable "image_repository_arns" {
  description = "ECR repositories the execution role may pull from. Empty for none."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for a in var.image_repository_arns : a if !can(regex("^arn:aws[a-z-]*:ecr:[a-z0-9-]+:[0-9]{12}:repository/[a-z0-9._/-]+$", a))]) == 0
    error_message = "each image_repository_arns entry must be a full ECR repository ARN (no wildcards)."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
