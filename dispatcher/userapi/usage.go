package userapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// JobUsage is the usage of one job's runs (or, as Usage.Org, of the whole
// org) over a time range.
type JobUsage struct {
	Job            string  `json:"job,omitempty"`
	Runs           int64   `json:"runs"`
	CPUSeconds     float64 `json:"cpu_seconds"`
	WallSeconds    float64 `json:"wall_seconds"`
	MaxRSSBytes    int64   `json:"max_rss_bytes"`
	EgressBytesOut int64   `json:"egress_bytes_out"`
	EgressBytesIn  int64   `json:"egress_bytes_in"`
	Denials        int64   `json:"denials"`
	Redactions     int64   `json:"redactions"`
	OutputBytes    int64   `json:"output_bytes"`
}

// Usage is the usage of an org's jobs over [From, To).
type Usage struct {
	From time.Time  `json:"from"`
	To   time.Time  `json:"to"`
	Org  JobUsage   `json:"org"`
	Jobs []JobUsage `json:"jobs"`
}

// UsageOf aggregates org's usage over [from, to), per job and in total,
// optionally for one job. Reports are cumulative per run, so each run
// counts once with its latest report in the range (its final one, if that
// is in the range); a run still going at to counts what it had used by its
// last report before to.
func (a *API) UsageOf(ctx context.Context, org string, from, to time.Time, job string) (Usage, error) {
	u := Usage{From: from, To: to, Jobs: []JobUsage{}}
	args := []any{from, to}
	jobCond := ""
	if job != "" {
		args = append(args, job)
		jobCond = " AND job_id = $3"
	}
	sql := `WITH latest AS (
		SELECT DISTINCT ON (run_id) job_id, cpu_user_seconds + cpu_system_seconds AS cpu, wall_seconds,
			max_rss_bytes, denials, redactions, stdout_bytes + stderr_bytes AS output,
			CASE WHEN jsonb_typeof(egress) = 'object' THEN egress END AS egress
		FROM usage_reports
		WHERE ended_at >= $1 AND ended_at < $2` + jobCond + `
		ORDER BY run_id, final DESC, ended_at DESC, report_id DESC)
	SELECT job_id, count(*), sum(cpu), sum(wall_seconds), max(max_rss_bytes),
		coalesce(sum((SELECT sum(CASE WHEN jsonb_typeof(v->'bytes_out') = 'number' THEN (v->>'bytes_out')::numeric ELSE 0 END) FROM jsonb_each(egress) AS e(k, v))), 0)::bigint,
		coalesce(sum((SELECT sum(CASE WHEN jsonb_typeof(v->'bytes_in') = 'number' THEN (v->>'bytes_in')::numeric ELSE 0 END) FROM jsonb_each(egress) AS e(k, v))), 0)::bigint,
		sum(denials)::bigint, sum(redactions)::bigint, sum(output)::bigint
	FROM latest GROUP BY job_id ORDER BY job_id`
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var j JobUsage
			if err := rows.Scan(&j.Job, &j.Runs, &j.CPUSeconds, &j.WallSeconds, &j.MaxRSSBytes, &j.EgressBytesOut,
				&j.EgressBytesIn, &j.Denials, &j.Redactions, &j.OutputBytes); err != nil {
				return err
			}
			u.Jobs = append(u.Jobs, j)
		}
		return rows.Err()
	})
	if err != nil {
		return Usage{}, fmt.Errorf("query usage: %w", err)
	}
	for _, j := range u.Jobs {
		u.Org.Runs += j.Runs
		u.Org.CPUSeconds += j.CPUSeconds
		u.Org.WallSeconds += j.WallSeconds
		u.Org.MaxRSSBytes = max(u.Org.MaxRSSBytes, j.MaxRSSBytes)
		u.Org.EgressBytesOut += j.EgressBytesOut
		u.Org.EgressBytesIn += j.EgressBytesIn
		u.Org.Denials += j.Denials
		u.Org.Redactions += j.Redactions
		u.Org.OutputBytes += j.OutputBytes
	}
	return u, nil
}

// ParseUsageQuery validates a usage request: from, to, job, format.
func (a *API) ParseUsageQuery(r *http.Request) (from, to time.Time, job string, csv bool, err error) {
	q, err := parseQuery(r, "from", "to", "job", "format")
	if err != nil {
		return
	}
	if csv, err = q.wantCSV(r); err != nil {
		return
	}
	if from, to, err = q.timeRange(a.now()); err != nil {
		return
	}
	job, err = q.slug("job")
	return
}

func (a *API) serveUsage(w http.ResponseWriter, r *http.Request) {
	org, err := OrgOf(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	from, to, job, csv, err := a.ParseUsageQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	u, err := a.UsageOf(r.Context(), org, from, to, job)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !csv {
		writeJSON(w, http.StatusOK, u)
		return
	}
	out := newCSV(w, "usage.csv", "job", "runs", "cpu_seconds", "wall_seconds", "max_rss_bytes",
		"egress_bytes_out", "egress_bytes_in", "denials", "redactions", "output_bytes")
	for _, j := range u.Jobs {
		out.row(j.Job, i64(j.Runs), f64(j.CPUSeconds), f64(j.WallSeconds), i64(j.MaxRSSBytes),
			i64(j.EgressBytesOut), i64(j.EgressBytesIn), i64(j.Denials), i64(j.Redactions), i64(j.OutputBytes))
	}
	out.close()
}

func i64(n int64) string   { return strconv.FormatInt(n, 10) }
func f64(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
