# Inputs of one Cordon job task definition. The naming rules match what the
# sidecar accepts (sidecar/agent ParseJobID) and the secrets path
# /{env}/{org_slug}/{secret_name} of seeds/000 "Secrets Naming Convention".

variable "env" {
  description = "Deployment environment, the first segment of every secret path /{env}/{org_slug}/{secret_name} (seeds/000), e.g. prod or staging."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.env))
    error_message = "env must be 1-16 lowercase letters, digits or '-', starting with a letter (it becomes part of secret ARNs and resource names)."
  }
}

variable "org_slug" {
  description = "The org's slug (orgs.slug): the second segment of secret paths and the org in the task's SPIFFE ID spiffe://TD/org/ORG/job/JOB."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.org_slug))
    error_message = "org_slug must be 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit (the rule the sidecar applies to SPIFFE IDs)."
  }
}

variable "job_name" {
  description = "The job's name as in the org's allowlist file (jobs.<name>) and its SPIFFE ID."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.job_name))
    error_message = "job_name must be 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit (the rule the sidecar applies to SPIFFE IDs)."
  }
}

variable "sidecar_image" {
  description = "The cordon/sidecar image, pinned by tag or digest (REPO:TAG or REPO@sha256:...); ':latest' is refused."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9./_:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.sidecar_image)) && !can(regex(":latest$", var.sidecar_image))
    error_message = "sidecar_image must name a repository with a tag or a sha256 digest, and not ':latest' (a task must run the sidecar that was reviewed)."
  }
}

variable "job_image" {
  description = "The job's image, pinned by tag or digest (REPO:TAG or REPO@sha256:...); ':latest' is refused. It needs nothing from Cordon: its entrypoint is replaced by the sidecar's shim."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9./_:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.job_image)) && !can(regex(":latest$", var.job_image))
    error_message = "job_image must name a repository with a tag or a sha256 digest, and not ':latest'."
  }
}

variable "job_command" {
  description = "The job's command and arguments (exec form, no shell), run by the shim: /cordon/bin/cordon-sidecar run -- <job_command>."
  type        = list(string)

  validation {
    condition     = length(var.job_command) > 0 && length([for a in var.job_command : a if a == ""]) == 0
    error_message = "job_command must hold at least the program to run, and no empty arguments."
  }
}

variable "job_environment" {
  description = "Plain, non-secret environment variables for the job. Secrets never go here: declare them in secret_names and the sidecar injects them (seeds/000 \"Secrets Injection\")."
  type        = map(string)
  default     = {}

  validation {
    condition = length([
      for k in keys(var.job_environment) : k
      if !can(regex("^[A-Z_][A-Z0-9_]*$", k)) || can(regex("^(AWS_|HTTPS?_PROXY$|NO_PROXY$|SPIFFE_)|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY$", upper(k)))
    ]) == 0
    error_message = "job_environment keys must be UPPER_SNAKE and must not look like credentials (AWS_*, *SECRET*, *TOKEN*, *PASSWORD*, *CREDENTIAL*, *PRIVATE*, *_KEY) or set what the shim owns (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, SPIFFE_*): put secrets in secret_names."
  }
}

variable "secret_names" {
  description = "Secret names the job declares (its DAG YAML); the sidecar fetches /{env}/{org_slug}/{name} and gives the job each as UPPER_SNAKE env (monad_rpc_key -> MONAD_RPC_KEY)."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for n in var.secret_names : n if !can(regex("^[a-z][a-z0-9_]{0,127}$", n))]) == 0
    error_message = "each secret name must be 1-128 lowercase letters, digits or '_', starting with a letter (no '/': a name cannot climb out of /{env}/{org_slug}/)."
  }
}

variable "task_uid" {
  description = "Numeric uid (and gid) both containers run as. Sidecar and job share it on purpose: the agent's handoff socket is 0600 and giving it to another uid needs CAP_CHOWN, which the task drops; separation between them comes from separate PID namespaces and the peer-checked socket."
  type        = number
  default     = 65532

  validation {
    condition     = var.task_uid > 0 && var.task_uid < 2147483647 && floor(var.task_uid) == var.task_uid
    error_message = "task_uid must be a positive integer: uid 0 (root) is refused (seeds/000 \"Container Isolation\")."
  }
}

variable "cpu" {
  description = "Task CPU units (Fargate sizes: 256, 512, 1024, 2048, 4096, 8192, 16384)."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate task size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Task memory in MiB (512 to 122880; Fargate allows only certain pairs with cpu)."
  type        = number
  default     = 1024

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880 && floor(var.memory) == var.memory
    error_message = "memory must be a whole number of MiB from 512 to 122880."
  }
}

variable "sidecar_cpu" {
  description = "CPU units reserved for the sidecar out of the task's cpu."
  type        = number
  default     = 128

  validation {
    condition     = var.sidecar_cpu >= 64 && var.sidecar_cpu <= 4096
    error_message = "sidecar_cpu must be 64-4096 units."
  }
}

variable "sidecar_memory" {
  description = "Hard memory limit of the sidecar in MiB, out of the task's memory."
  type        = number
  default     = 256

  validation {
    condition     = var.sidecar_memory >= 64 && var.sidecar_memory <= 4096
    error_message = "sidecar_memory must be 64-4096 MiB."
  }
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64; the images must be built for it."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "job_writable_paths" {
  description = "Absolute paths in the job container backed by task ephemeral storage: the only places it can write (seeds/000: \"writes only to designated output paths\"). The job image should declare them as VOLUMEs owned by task_uid."
  type        = list(string)
  default     = ["/tmp"]

  validation {
    condition = length([
      for p in var.job_writable_paths : p
      if !can(regex("^/[A-Za-z0-9._/-]+$", p)) || can(regex("(^|/)\\.\\.(/|$)", p)) || can(regex("^/(cordon|proc|sys|dev|etc)(/|$)", p))
    ]) == 0
    error_message = "job_writable_paths must be absolute, without '..', and not under /cordon, /proc, /sys, /dev or /etc."
  }
}

variable "spire_socket_dir" {
  description = "Directory of the SPIRE agent's Workload API socket (agent.sock) in the sidecar container; a SPIRE agent in the task shares it through the spire-agent-socket volume."
  type        = string
  default     = "/run/spire/sockets"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+[^/]$", var.spire_socket_dir)) && !can(regex("^/cordon(/|$)", var.spire_socket_dir))
    error_message = "spire_socket_dir must be an absolute directory path outside /cordon, without a trailing '/'."
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for both containers' (scrubbed) output."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "image_repository_arns" {
  description = "ECR repositories the execution role may pull from (the sidecar's and the job's). Empty when both images come from a registry that needs no credentials."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for a in var.image_repository_arns : a if !can(regex("^arn:aws[a-z-]*:ecr:[a-z0-9-]+:[0-9]{12}:repository/[a-z0-9._/-]+$", a))]) == 0
    error_message = "each image_repository_arns entry must be a full ECR repository ARN (no wildcards)."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys the org's secrets are encrypted with (empty for the aws/secretsmanager key). Decrypt is allowed only via Secrets Manager."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for a in var.secrets_kms_key_arns : a if !can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$", a))]) == 0
    error_message = "each secrets_kms_key_arns entry must be a full KMS key ARN (no aliases, no wildcards)."
  }
}

variable "allow_batch_get_secrets" {
  description = "Also grant secretsmanager:BatchGetSecretValue, which has no resource-level permissions (its Resource must be \"*\"); every secret in a batch is still authorised against the scoped GetSecretValue. When false the agent's batch call is denied and it falls back to one GetSecretValue per secret (sidecar/secrets)."
  type        = bool
  default     = false
}

variable "vpc_id" {
  description = "VPC of the job subnets. Their route tables must have no NAT or internet gateway route (seeds/000 \"Network Isolation\"): the security group below is the second wall, not the only one."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC ID (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private job subnets (no NAT) to run the task in; returned in network_configuration for RunTask."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && length([for s in var.subnet_ids : s if !can(regex("^subnet-[0-9a-f]+$", s))]) == 0
    error_message = "subnet_ids must hold at least one subnet ID (subnet-...)."
  }
}

variable "gateway_security_group_id" {
  description = "Security group of the cordon-egress gateway service (modules/cordon-gateway output security_group_id): the task's only way out to the internet."
  type        = string

  validation {
    condition     = can(regex("^sg-[0-9a-f]+$", var.gateway_security_group_id))
    error_message = "gateway_security_group_id must be a security group ID (sg-...)."
  }
}

variable "gateway_port" {
  description = "The gateway's mTLS listener port."
  type        = number
  default     = 8443

  validation {
    condition     = var.gateway_port >= 1 && var.gateway_port <= 65535 && floor(var.gateway_port) == var.gateway_port
    error_message = "gateway_port must be a TCP port (1-65535)."
  }
}

variable "xds_address" {
  description = "cordon-xds HOST:PORT the agent takes the job's egress policy from (ADS over mTLS with the task's SVID)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9.-]+:[0-9]{1,5}$", var.xds_address))
    error_message = "xds_address must be HOST:PORT."
  }
}

variable "gateway_address" {
  description = "cordon-egress gateway HOST:PORT (modules/cordon-gateway, e.g. its Cloud Map name): the agent forwards allowed traffic through it over mTLS, so both hops check."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9.-]+:[0-9]{1,5}$", var.gateway_address))
    error_message = "gateway_address must be HOST:PORT."
  }
}

variable "dispatcher_url" {
  description = "cordon-dispatcher ingest URL (https://HOST:PORT) the agent reports usage and audit events to. Null turns reporting off (events are only logged)."
  type        = string
  default     = null

  validation {
    condition     = var.dispatcher_url == null || can(regex("^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$", var.dispatcher_url))
    error_message = "dispatcher_url must be https://HOST[:PORT] (reports carry audit events: never plain HTTP)."
  }
}

variable "control_plane_endpoints" {
  description = "Cordon services the sidecar calls besides the gateway, each a security group and TCP port: cordon-xds (ADS) and cordon-dispatcher (usage and audit ingest)."
  type = list(object({
    name              = string
    security_group_id = string
    port              = number
  }))
  default = []

  validation {
    condition = length([
      for e in var.control_plane_endpoints : e
      if !can(regex("^[a-z][a-z0-9-]{0,31}$", e.name)) || !can(regex("^sg-[0-9a-f]+$", e.security_group_id)) || e.port < 1 || e.port > 65535
    ]) == 0
    error_message = "each control_plane_endpoints entry needs a short lowercase name, a security group ID (sg-...) and a TCP port."
  }
}

variable "vpc_endpoint_security_group_ids" {
  description = "Security groups of the interface VPC endpoints the task uses on 443 (Secrets Manager, CloudWatch Logs, ECR api/dkr, STS, SES/SNS)."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for s in var.vpc_endpoint_security_group_ids : s if !can(regex("^sg-[0-9a-f]+$", s))]) == 0
    error_message = "vpc_endpoint_security_group_ids must be security group IDs (sg-...)."
  }
}

variable "vpc_endpoint_prefix_list_ids" {
  description = "Managed prefix lists of gateway VPC endpoints the task uses on 443 (S3: ECR layers and platform storage)."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for p in var.vpc_endpoint_prefix_list_ids : p if !can(regex("^pl-[0-9a-f]+$", p))]) == 0
    error_message = "vpc_endpoint_prefix_list_ids must be prefix list IDs (pl-...)."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
