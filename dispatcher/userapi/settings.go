package userapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/alerts"
	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/internal/audit"
)

// The setters behind the admin routes; the dispatcher wires
// admission.Service, alerts.Alerter and anomaly.Detector into Settings.
type (
	// QuotaSetter sets an org's run quota.
	QuotaSetter interface {
		SetQuota(ctx context.Context, org string, maxConcurrent, maxPerHour int) error
	}
	// BudgetSetter sets an org's monthly budget and alert thresholds.
	BudgetSetter interface {
		SetBudget(ctx context.Context, org string, monthlyUSD float64, thresholdsPct []int) error
	}
	// WebhookSetter sets an org's alert webhook and returns its new
	// signing secret.
	WebhookSetter interface {
		SetWebhook(ctx context.Context, org, url string) ([]byte, error)
	}
	// AnomalyPolicySetter sets what an anomaly does (notify, terminate).
	AnomalyPolicySetter interface {
		SetPolicy(ctx context.Context, org, policy string) error
	}
)

// Settings are the admin routes' backends. A nil setter answers its route
// 501 not_configured.
type Settings struct {
	// Quotas sets run quotas. If nil, PUT /api/v1/admin/quota is off.
	Quotas QuotaSetter
	// Budgets sets cost budgets. If nil, PUT /api/v1/admin/budget is off.
	Budgets BudgetSetter
	// Webhooks sets alert webhooks. If nil, PUT /api/v1/admin/webhook is
	// off.
	Webhooks WebhookSetter
	// AnomalyPolicy sets anomaly policies. If nil, PUT
	// /api/v1/admin/anomaly-policy is off.
	AnomalyPolicy AnomalyPolicySetter
	// MaxConcurrentRuns and MaxRunsPerHour are the ceilings an org admin
	// may set: a tenant may tighten its quota, not lift it past the
	// platform's. If zero, 100 and 1200 (admission's defaults).
	MaxConcurrentRuns, MaxRunsPerHour int
}

// EventSettingsChanged is the audit event type of every admin change,
// successful or not.
const EventSettingsChanged = "ORG_SETTINGS_CHANGED"

const maxSettingsBody = 4 << 10

// QuotaSettings is the body of PUT /api/v1/admin/quota.
type QuotaSettings struct {
	MaxConcurrentRuns int `json:"max_concurrent_runs"`
	MaxRunsPerHour    int `json:"max_runs_per_hour"`
}

// BudgetSettings is the body of PUT /api/v1/admin/budget.
type BudgetSettings struct {
	MonthlyUSD    float64 `json:"monthly_usd"`
	ThresholdsPct []int   `json:"thresholds_pct"`
}

// WebhookSettings is the body of PUT /api/v1/admin/webhook.
type WebhookSettings struct {
	URL string `json:"url"`
}

// WebhookSecret answers PUT /api/v1/admin/webhook: the signing secret,
// shown this once.
type WebhookSecret struct {
	URL           string `json:"url"`
	SigningSecret string `json:"signing_secret"` // base64
}

// AnomalyPolicySettings is the body of PUT /api/v1/admin/anomaly-policy.
type AnomalyPolicySettings struct {
	Policy string `json:"policy"`
}

// decodeSettings reads a small strict JSON body into v.
func decodeSettings(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxSettingsBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return paramErr("body", "want a JSON object of at most %d bytes with only the documented fields: %v", maxSettingsBody, err)
	}
	if dec.More() {
		return paramErr("body", "want exactly one JSON object")
	}
	return nil
}

// setting runs one admin change: decode, check, set, audit, answer.
// apply returns the answer body, or an error; a *ParamError is the
// caller's fault (400), anything else the server's.
func (a *API) setting(name string, configured bool, apply func(ctx context.Context, org string, r *http.Request) (body any, meta map[string]any, err error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !configured {
			writeError(w, http.StatusNotImplemented, "not_configured", "this dispatcher does not manage "+name)
			return
		}
		id, ok := authn.IdentityFrom(r.Context())
		if !ok || id.OrgID == "" {
			a.fail(w, r, ErrNoOrg)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		body, meta, err := apply(ctx, id.OrgID, r)
		result := audit.ResultSuccess
		if err != nil {
			result = audit.ResultFailure
			if meta == nil {
				meta = map[string]any{}
			}
			var pe *ParamError
			if errors.As(err, &pe) {
				meta["refused"] = pe.Name
			}
		}
		a.audit.Emit(audit.Event{
			Timestamp: a.now().UTC(), EventType: EventSettingsChanged, EventID: audit.NewID(),
			Actor:    audit.Actor{Type: audit.ActorUser, ID: id.Subject},
			Resource: audit.Resource{Type: "ORG_SETTINGS", ID: name, TenantID: id.OrgID},
			Action:   "UPDATE", Result: result, Metadata: meta, RequestID: authn.RequestID(r),
		})
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, body)
	}
}

func (a *API) serveSetQuota(ctx context.Context, org string, r *http.Request) (any, map[string]any, error) {
	var q QuotaSettings
	if err := decodeSettings(r, &q); err != nil {
		return nil, nil, err
	}
	meta := map[string]any{"max_concurrent_runs": q.MaxConcurrentRuns, "max_runs_per_hour": q.MaxRunsPerHour}
	if q.MaxConcurrentRuns < 0 || q.MaxConcurrentRuns > a.settings.MaxConcurrentRuns {
		return nil, meta, paramErr("max_concurrent_runs", "must be 0 to %d (the platform's ceiling)", a.settings.MaxConcurrentRuns)
	}
	if q.MaxRunsPerHour < 0 || q.MaxRunsPerHour > a.settings.MaxRunsPerHour {
		return nil, meta, paramErr("max_runs_per_hour", "must be 0 to %d (the platform's ceiling)", a.settings.MaxRunsPerHour)
	}
	if err := a.settings.Quotas.SetQuota(ctx, org, q.MaxConcurrentRuns, q.MaxRunsPerHour); err != nil {
		return nil, meta, err
	}
	return q, meta, nil
}

func (a *API) serveSetBudget(ctx context.Context, org string, r *http.Request) (any, map[string]any, error) {
	var b BudgetSettings
	if err := decodeSettings(r, &b); err != nil {
		return nil, nil, err
	}
	meta := map[string]any{"monthly_usd": b.MonthlyUSD, "thresholds_pct": b.ThresholdsPct}
	if !(b.MonthlyUSD > 0 && b.MonthlyUSD <= 1e9) {
		return nil, meta, paramErr("monthly_usd", "must be a positive number of dollars up to 1e9")
	}
	if len(b.ThresholdsPct) == 0 || len(b.ThresholdsPct) > 10 {
		return nil, meta, paramErr("thresholds_pct", "want 1 to 10 percentages, e.g. [50, 80, 100]")
	}
	for i, p := range b.ThresholdsPct {
		if p < 1 || p > 1000 || i > 0 && p <= b.ThresholdsPct[i-1] {
			return nil, meta, paramErr("thresholds_pct", "want increasing percentages from 1 to 1000")
		}
	}
	if err := a.settings.Budgets.SetBudget(ctx, org, b.MonthlyUSD, b.ThresholdsPct); err != nil {
		return nil, meta, err
	}
	return b, meta, nil
}

func (a *API) serveSetWebhook(ctx context.Context, org string, r *http.Request) (any, map[string]any, error) {
	var s WebhookSettings
	if err := decodeSettings(r, &s); err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(s.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || len(s.URL) > 2048 {
		return nil, nil, paramErr("url", "want an https URL of at most 2048 bytes listed in the org's allowlist webhooks")
	}
	// Webhook URLs often carry a token in their path (Slack's do): the
	// audit row gets the host only.
	meta := map[string]any{"host": u.Hostname()}
	secret, err := a.settings.Webhooks.SetWebhook(ctx, org, s.URL)
	if errors.Is(err, alerts.ErrWebhookNotAllowed) || errors.Is(err, alerts.ErrNotPublic) {
		return nil, meta, paramErr("url", "%v", err)
	}
	if err != nil {
		return nil, meta, fmt.Errorf("set webhook: %w", err)
	}
	return WebhookSecret{URL: s.URL, SigningSecret: base64.StdEncoding.EncodeToString(secret)}, meta, nil
}

func (a *API) serveSetAnomalyPolicy(ctx context.Context, org string, r *http.Request) (any, map[string]any, error) {
	var p AnomalyPolicySettings
	if err := decodeSettings(r, &p); err != nil {
		return nil, nil, err
	}
	if p.Policy != "notify" && p.Policy != "terminate" {
		return nil, nil, paramErr("policy", `want "notify" or "terminate"`)
	}
	meta := map[string]any{"policy": p.Policy}
	if err := a.settings.AnomalyPolicy.SetPolicy(ctx, org, p.Policy); err != nil {
		return nil, meta, err
	}
	return p, meta, nil
}
