// Package usage defines the usage report a sidecar sends the dispatcher for
// each run (DESIGN.md, "How a task runs", step 5). It is only the wire type;
// collection lives in sidecar/, storage in dispatcher/.
package usage

import "time"

// Report is one usage report. A long run sends periodic reports (Final
// false) and one final report; each has its own ReportID so redelivery is
// idempotent. Counters are cumulative since the run started, so the latest
// report of a run supersedes earlier ones.
type Report struct {
	ReportID  string    `json:"report_id"` // "usg_" + UUIDv7
	Org       string    `json:"org"`
	Job       string    `json:"job"`
	RunID     string    `json:"run_id"`
	Final     bool      `json:"final"`
	StartedAt time.Time `json:"started_at"`
	// EndedAt is the end of the run for a final report, else the sample time.
	EndedAt  time.Time `json:"ended_at"`
	ExitCode *int      `json:"exit_code,omitempty"` // set on a final report

	CPUUserSeconds   float64 `json:"cpu_user_seconds"`
	CPUSystemSeconds float64 `json:"cpu_system_seconds"`
	MaxRSSBytes      int64   `json:"max_rss_bytes"`
	WallSeconds      float64 `json:"wall_seconds"`

	// Egress is keyed by "host:port" as the allowlist names it, so its size
	// is bounded by the job's allowlist plus one "denied" bucket.
	Egress      map[string]Egress `json:"egress,omitempty"`
	Denials     int64             `json:"denials"`
	Redactions  int64             `json:"redactions"`
	StdoutBytes int64             `json:"stdout_bytes"`
	StderrBytes int64             `json:"stderr_bytes"`
	// Enforcement is "cgroup-ebpf" or "network-only" (see bpf/).
	Enforcement string `json:"enforcement"`
}

// Egress counts one destination's traffic.
type Egress struct {
	BytesOut int64 `json:"bytes_out"`
	BytesIn  int64 `json:"bytes_in"`
	Requests int64 `json:"requests"`
	Denials  int64 `json:"denials"`
}
