package userapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ParamError is a query parameter that was refused. Its message says what
// was wrong and what is accepted.
type ParamError struct {
	Name string // the parameter
	Msg  string
}

func (e *ParamError) Error() string { return fmt.Sprintf("query parameter %q: %s", e.Name, e.Msg) }

func paramErr(name, format string, args ...any) error {
	return &ParamError{Name: name, Msg: fmt.Sprintf(format, args...)}
}

// Limits of the query parameters.
const (
	DefaultLimit   = 100
	MaxLimit       = 1000  // JSON pages
	MaxCSVLimit    = 50000 // CSV pages
	MaxRange       = 366 * 24 * time.Hour
	DefaultRange   = 24 * time.Hour
	MaxBuckets     = 1000
	DefaultBuckets = 24
	maxParamLen    = 256
	maxCursorLen   = 512
)

var (
	slugPattern      = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)
	eventTypePattern = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)
	results          = []string{"SUCCESS", "FAILURE", "DENIED", "WOULD_DENY"}
)

// query is a request's parameters, checked against the endpoint's list:
// an unknown parameter, a repeated one, an over-long or non-UTF-8 value is
// refused.
type query struct{ v url.Values }

func parseQuery(r *http.Request, allowed ...string) (query, error) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return query{}, paramErr("", "the query string is malformed: %v", err)
	}
	names := make([]string, 0, len(v))
	for k := range v {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if !slices.Contains(allowed, k) {
			return query{}, paramErr(k, "unknown parameter; this endpoint accepts %s", strings.Join(allowed, ", "))
		}
		if len(v[k]) > 1 {
			return query{}, paramErr(k, "given %d times; give it once", len(v[k]))
		}
		if len(v[k][0]) > maxParamLen && k != "cursor" {
			return query{}, paramErr(k, "longer than %d bytes", maxParamLen)
		}
		if !utf8Valid(v[k][0]) {
			return query{}, paramErr(k, "not valid UTF-8")
		}
	}
	return query{v}, nil
}

func utf8Valid(s string) bool {
	return strings.ToValidUTF8(s, "\uFFFD") == s && !strings.ContainsRune(s, 0)
}

func (q query) str(name string) string { return q.v.Get(name) }

func (q query) slug(name string) (string, error) {
	s := q.v.Get(name)
	if s != "" && !slugPattern.MatchString(s) {
		return "", paramErr(name, "want a job name: lowercase letters, digits, '-' and '_', at most 63 characters")
	}
	return s, nil
}

// timeRange reads from and to (RFC 3339). to defaults to now, from to
// to minus 24h; from must be before to and the range at most MaxRange.
func (q query) timeRange(now time.Time) (from, to time.Time, err error) {
	to = now.UTC()
	if s := q.v.Get("to"); s != "" {
		if to, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return from, to, paramErr("to", "want an RFC 3339 time such as 2026-01-15T10:30:00Z")
		}
	}
	from = to.Add(-DefaultRange)
	if s := q.v.Get("from"); s != "" {
		if from, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return from, to, paramErr("from", "want an RFC 3339 time such as 2026-01-15T10:30:00Z")
		}
	}
	if !from.Before(to) {
		return from, to, paramErr("from", "must be before to")
	}
	if to.Sub(from) > MaxRange {
		return from, to, paramErr("from", "the range from..to is longer than %d days; narrow it", int(MaxRange.Hours()/24))
	}
	if from.Year() < 2000 || to.Year() > 9999 {
		return from, to, paramErr("from", "the range must lie between the year 2000 and 9999")
	}
	return from.UTC(), to.UTC(), nil
}

func (q query) limit(csv bool) (int, error) {
	s := q.v.Get("limit")
	max := MaxLimit
	if csv {
		max = MaxCSVLimit
	}
	if s == "" {
		if csv {
			return MaxCSVLimit, nil
		}
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, paramErr("limit", "want an integer from 1 to %d", max)
	}
	return n, nil
}

// wantCSV reads format (json or csv) and the Accept header: CSV when
// format=csv, or when format is absent and Accept names text/csv.
func (q query) wantCSV(r *http.Request) (bool, error) {
	switch q.v.Get("format") {
	case "csv":
		return true, nil
	case "json":
		return false, nil
	case "":
	default:
		return false, paramErr("format", "want json or csv")
	}
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err == nil && mt == "text/csv" {
			return true, nil
		}
	}
	return false, nil
}

// cursorPos is where a page ended: the sort key of its last row.
type cursorPos struct {
	T  int64  `json:"t"` // microseconds since the Unix epoch
	ID string `json:"i"`
	C  string `json:"c,omitempty"`
	// F and U are the first page's resolved from and to (microseconds):
	// later pages keep them, so a range that defaulted to "the last 24h"
	// does not slide between pages.
	F int64 `json:"f"`
	U int64 `json:"u"`
}

func (p cursorPos) time() time.Time { return time.UnixMicro(p.T).UTC() }

// Cursors are base64url(JSON position) "." base64url(HMAC-SHA256(key,
// endpoint, org, filters, position))[:16 bytes]. Binding the filters and
// the org means a cursor cannot be replayed against another query or
// another org, and a forged position is refused rather than trusted.
func (a *API) signCursor(endpoint, org, filters string, p cursorPos) string {
	body, _ := json.Marshal(p)
	enc := base64.RawURLEncoding.EncodeToString(body)
	return enc + "." + base64.RawURLEncoding.EncodeToString(a.cursorMAC(endpoint, org, filters, enc))
}

func (a *API) cursorMAC(endpoint, org, filters, enc string) []byte {
	m := hmac.New(sha256.New, a.cursorKey)
	for _, s := range []string{endpoint, org, filters, enc} {
		m.Write([]byte(strconv.Itoa(len(s)) + ":" + s))
	}
	return m.Sum(nil)[:16]
}

func (a *API) parseCursor(endpoint, org, filters, s string) (*cursorPos, error) {
	if s == "" {
		return nil, nil
	}
	bad := paramErr("cursor", "not a cursor this API issued for this query; start again without cursor")
	if len(s) > maxCursorLen {
		return nil, bad
	}
	enc, mac, ok := strings.Cut(s, ".")
	if !ok {
		return nil, bad
	}
	got, err := base64.RawURLEncoding.DecodeString(mac)
	if err != nil || !hmac.Equal(got, a.cursorMAC(endpoint, org, filters, enc)) {
		return nil, bad
	}
	body, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil, bad
	}
	var p cursorPos
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, bad
	}
	return &p, nil
}

// filterKey is the canonical form of the parameters a cursor is bound to:
// all of them except cursor, limit and format.
func (q query) filterKey() string {
	var b strings.Builder
	names := make([]string, 0, len(q.v))
	for k := range q.v {
		if k != "cursor" && k != "limit" && k != "format" {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		b.WriteString(url.QueryEscape(k) + "=" + url.QueryEscape(q.v.Get(k)) + "&")
	}
	return b.String()
}
