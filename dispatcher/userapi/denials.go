package userapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// EventEgressDenied is the event type of an egress denial (egress-proxy).
const EventEgressDenied = "EGRESS_DENIED"

// DenialBucket is the number of denials in [Start, Start+bucket).
type DenialBucket struct {
	Start time.Time `json:"start"`
	Count int64     `json:"count"`
}

// DenialDestination is a destination ("host:port") denied to a job.
type DenialDestination struct {
	Job         string    `json:"job"`
	Destination string    `json:"destination"`
	Count       int64     `json:"count"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
}

// JobDenials is a job's denial count.
type JobDenials struct {
	Job   string `json:"job"`
	Count int64  `json:"count"`
}

// Denials summarises an org's egress denials over [From, To).
type Denials struct {
	From          time.Time           `json:"from"`
	To            time.Time           `json:"to"`
	BucketSeconds int64               `json:"bucket_seconds"`
	Total         int64               `json:"total"`
	Buckets       []DenialBucket      `json:"buckets"` // every bucket of the range, empty ones included
	ByJob         []JobDenials        `json:"by_job"`
	Top           []DenialDestination `json:"top_destinations"` // at most TopPerJob per job
}

// DenialQuery selects denials.
type DenialQuery struct {
	From, To  time.Time
	Job       string        // if empty, every job
	Bucket    time.Duration // chart bucket width; if zero, (To-From)/DefaultBuckets
	TopPerJob int           // if zero, 10
}

var denialParams = []string{"from", "to", "job", "bucket", "top", "format"}

// ParseDenialQuery validates an egress-denials request.
func (a *API) ParseDenialQuery(r *http.Request) (DenialQuery, bool, error) {
	q, err := parseQuery(r, denialParams...)
	if err != nil {
		return DenialQuery{}, false, err
	}
	csv, err := q.wantCSV(r)
	if err != nil {
		return DenialQuery{}, false, err
	}
	var dq DenialQuery
	if dq.From, dq.To, err = q.timeRange(a.now()); err != nil {
		return dq, csv, err
	}
	if dq.Job, err = q.slug("job"); err != nil {
		return dq, csv, err
	}
	if s := q.str("bucket"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Minute || d%time.Minute != 0 {
			return dq, csv, paramErr("bucket", "want a whole number of minutes such as 5m or 1h")
		}
		dq.Bucket = d
	}
	if s := q.str("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100 {
			return dq, csv, paramErr("top", "want an integer from 1 to 100")
		}
		dq.TopPerJob = n
	}
	return dq, csv, dq.normalise()
}

func (dq *DenialQuery) normalise() error {
	span := dq.To.Sub(dq.From)
	if dq.Bucket == 0 {
		per := span / DefaultBuckets
		dq.Bucket = max(time.Minute, (per+time.Minute-1)/time.Minute*time.Minute)
	}
	if n := (span + dq.Bucket - 1) / dq.Bucket; n > MaxBuckets {
		return paramErr("bucket", "the range holds %d buckets of %s; at most %d are allowed, widen bucket", n, dq.Bucket, MaxBuckets)
	}
	if dq.TopPerJob == 0 {
		dq.TopPerJob = 10
	}
	return nil
}

// denialJob is a denial's job: the proxy's metadata.job, else the job of
// the actor's SPIFFE ID.
const denialJob = `coalesce(metadata->>'job', substring(actor_id from '/job/([a-z0-9_-]+)$'), '')`

// DenialsOf summarises org's egress denials (EGRESS_DENIED events).
func (a *API) DenialsOf(ctx context.Context, org string, q DenialQuery) (Denials, error) {
	if err := q.normalise(); err != nil {
		return Denials{}, err
	}
	d := Denials{From: q.From, To: q.To, BucketSeconds: int64(q.Bucket / time.Second),
		Buckets: []DenialBucket{}, ByJob: []JobDenials{}, Top: []DenialDestination{}}
	base := `SELECT ` + denialJob + ` AS job, resource_id, ts FROM audit_events
		WHERE event_type = '` + EventEgressDenied + `' AND ts >= $1 AND ts < $2
		AND chain_month >= date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC')::date
		AND chain_month <= date_trunc('month', $2::timestamptz AT TIME ZONE 'UTC')::date`
	args := []any{q.From, q.To}
	if q.Job != "" {
		base = `SELECT * FROM (` + base + `) j WHERE job = $3`
		args = append(args, q.Job)
	}
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		n := len(args)
		bucketArgs := append(append([]any{}, args...), q.Bucket)
		bsql := fmt.Sprintf(`WITH d AS (%s)
			SELECT g.b, coalesce(c.n, 0) FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 microsecond', $%d::interval) AS g(b)
			LEFT JOIN (SELECT date_bin($%d::interval, ts, $1::timestamptz) AS b, count(*) AS n FROM d GROUP BY 1) c USING (b)
			ORDER BY g.b`, base, n+1, n+1)
		rows, err := tx.Query(ctx, bsql, bucketArgs...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var b DenialBucket
			if err := rows.Scan(&b.Start, &b.Count); err != nil {
				rows.Close()
				return err
			}
			b.Start = b.Start.UTC()
			d.Total += b.Count
			d.Buckets = append(d.Buckets, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `WITH d AS (`+base+`) SELECT job, count(*) FROM d GROUP BY job ORDER BY count(*) DESC, job`, args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var j JobDenials
			if err := rows.Scan(&j.Job, &j.Count); err != nil {
				rows.Close()
				return err
			}
			d.ByJob = append(d.ByJob, j)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		topArgs := append(append([]any{}, args...), q.TopPerJob)
		rows, err = tx.Query(ctx, fmt.Sprintf(`WITH d AS (%s)
			SELECT job, resource_id, n, first, last FROM (
				SELECT job, resource_id, count(*) AS n, min(ts) AS first, max(ts) AS last,
					row_number() OVER (PARTITION BY job ORDER BY count(*) DESC, resource_id) AS rank
				FROM d GROUP BY job, resource_id) t
			WHERE rank <= $%d ORDER BY job, n DESC, resource_id`, base, n+1), topArgs...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var t DenialDestination
			if err := rows.Scan(&t.Job, &t.Destination, &t.Count, &t.FirstSeen, &t.LastSeen); err != nil {
				return err
			}
			t.FirstSeen, t.LastSeen = t.FirstSeen.UTC(), t.LastSeen.UTC()
			d.Top = append(d.Top, t)
		}
		return rows.Err()
	})
	if err != nil {
		return Denials{}, fmt.Errorf("query egress denials: %w", err)
	}
	return d, nil
}

func (a *API) serveDenials(w http.ResponseWriter, r *http.Request) {
	org, err := OrgOf(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q, csv, err := a.ParseDenialQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	d, err := a.DenialsOf(r.Context(), org, q)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !csv {
		writeJSON(w, http.StatusOK, d)
		return
	}
	// The CSV export is the top-destinations table, the part worth a
	// spreadsheet; the chart's buckets are in the JSON answer.
	out := newCSV(w, "egress-denials.csv", "job", "destination", "count", "first_seen", "last_seen")
	for _, t := range d.Top {
		out.row(t.Job, t.Destination, i64(t.Count), t.FirstSeen.Format(time.RFC3339Nano), t.LastSeen.Format(time.RFC3339Nano))
	}
	out.close()
}
