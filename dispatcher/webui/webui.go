// Package webui is the security team's pages, served by the dispatcher at
// /ui/: egress denials over time (an SVG chart rendered on the server), top
// denied destinations per job, usage per job, a searchable audit log and
// the current allowlist per job. Pages are server-rendered with
// html/template; the CSS and one small script are embedded, so the binary
// needs no CDN and the build needs no npm.
//
// Authentication is the API's: the browser holds the user's OIDC ID token
// in a cookie (HttpOnly, Secure, SameSite=Strict, Path=/ui/) set by a login
// form where the user pastes it, and each page request runs the same
// authn.Authenticate and authn.Require (permission matrix, denial audit) as
// the JSON API with that token. The queries are the API's own methods
// (dispatcher/userapi), so the same row-level security confines them.
//
// The pages are read-only. The two POSTs (log in, log out) are refused
// when cross-origin (net/http's CrossOriginProtection), every answer
// carries a Content-Security-Policy without 'unsafe-inline' and forbids
// framing, and everything from the database (job names, hosts, metadata,
// which jobs influence) is escaped by html/template.
//
// It is not an identity provider (no OIDC redirect flow) and not the API.
package webui

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/cordon-dev/cordon/dispatcher/userapi"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// CookieName holds the bearer token.
const CookieName = "cordon_token"

// maxTokenBytes bounds a pasted token (a Cognito ID token is about 1 KB).
const maxTokenBytes = 8 << 10

// Config configures a UI.
type Config struct {
	// API runs the queries. Required.
	API *userapi.API
	// Auth authenticates and authorises each page. Required; the same
	// Authenticator as the API's.
	Auth *authn.Authenticator
	// Logger receives the UI's logs. If nil, discarded.
	Logger *slog.Logger
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// UI serves the pages. Create it with New.
type UI struct {
	api   *userapi.API
	auth  *authn.Authenticator
	log   *slog.Logger
	now   func() time.Time
	pages map[string]*template.Template
}

// New returns a UI.
func New(cfg Config) (*UI, error) {
	if cfg.API == nil || cfg.Auth == nil {
		return nil, errors.New("webui: Config.API and Config.Auth are required")
	}
	u := &UI{api: cfg.API, auth: cfg.Auth, log: cfg.Logger, now: cfg.Now, pages: map[string]*template.Template{}}
	if u.log == nil {
		u.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if u.now == nil {
		u.now = time.Now
	}
	funcs := template.FuncMap{
		"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"fmtTime": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
		"bytes":   humanBytes,
	}
	for _, p := range []string{"login", "overview", "audit", "allowlists", "error"} {
		t, err := template.New(p).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("webui: parse template %s: %w", p, err)
		}
		u.pages[p] = t
	}
	return u, nil
}

// Handler returns the pages under /ui/.
func (u *UI) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /ui/login", func(w http.ResponseWriter, r *http.Request) {
		u.render(w, http.StatusOK, "login", page{Title: "Log in"})
	})
	mux.HandleFunc("POST /ui/login", u.login)
	mux.HandleFunc("POST /ui/logout", u.logout)
	mux.Handle("GET /ui/{$}", u.protect(u.overview, rbac.EgressDenials, rbac.Usage))
	mux.Handle("GET /ui/audit", u.protect(u.audit, rbac.AuditEvents))
	mux.Handle("GET /ui/allowlists", u.protect(u.allowlists, rbac.Allowlists))
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		u.render(w, http.StatusNotFound, "error", page{Title: "Not found", Error: "There is no such page."})
	})
	return securityHeaders(http.NewCrossOriginProtection().Handler(mux))
}

// securityHeaders: no inline script or style, nothing from other origins,
// no framing, no caching of pages that show an org's data.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
			"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		if !strings.HasPrefix(r.URL.Path, "/ui/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

// protect authenticates the cookie's token with the API's Authenticator and
// requires View on each resource; an absent or refused token sends the
// browser to the login page.
func (u *UI) protect(h http.HandlerFunc, resources ...rbac.Resource) http.Handler {
	var inner http.Handler = h
	for i := len(resources) - 1; i >= 0; i-- {
		inner = u.auth.Require(rbac.View, resources[i])(inner)
	}
	inner = u.auth.Authenticate(inner)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(CookieName)
		if err != nil || c.Value == "" {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+c.Value)
		inner.ServeHTTP(&refusalWriter{ResponseWriter: w, r: r, u: u}, r)
	})
}

// refusalWriter turns authn's JSON refusals into pages: 401 to the login
// page (the token expired), 403 to a page that says so.
type refusalWriter struct {
	http.ResponseWriter
	r          *http.Request
	u          *UI
	suppressed bool
}

func (rw *refusalWriter) WriteHeader(code int) {
	switch code {
	case http.StatusUnauthorized:
		rw.suppressed = true
		clearCookie(rw.ResponseWriter)
		rw.ResponseWriter.Header().Del("WWW-Authenticate")
		http.Redirect(rw.ResponseWriter, rw.r, "/ui/login", http.StatusSeeOther)
	case http.StatusForbidden:
		rw.suppressed = true
		rw.u.render(rw.ResponseWriter, code, "error", page{Title: "Not allowed",
			Error: "Your role may not see this page. Ask an admin of your organisation."})
	default:
		rw.ResponseWriter.WriteHeader(code)
	}
}

func (rw *refusalWriter) Write(b []byte) (int, error) {
	if rw.suppressed {
		return len(b), nil
	}
	return rw.ResponseWriter.Write(b)
}

func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenBytes+1024)
	if err := r.ParseForm(); err != nil {
		u.render(w, http.StatusBadRequest, "login", page{Title: "Log in", Error: "The form could not be read."})
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	tok = strings.TrimPrefix(tok, "Bearer ")
	if tok == "" || len(tok) > maxTokenBytes || strings.ContainsAny(tok, " \t\r\n;,\"\\") {
		u.render(w, http.StatusBadRequest, "login", page{Title: "Log in", Error: "That is not a token."})
		return
	}
	// Check the token exactly as a page request would, before storing it.
	ok := false
	probe := r.Clone(r.Context())
	probe.Header.Set("Authorization", "Bearer "+tok)
	rec := &discardWriter{h: http.Header{}}
	u.auth.Authenticate(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ok = true })).ServeHTTP(rec, probe)
	if !ok {
		u.render(w, http.StatusUnauthorized, "login", page{Title: "Log in", Error: "The token was refused: it is invalid, expired, or for an organisation that is not set up."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: tok, Path: "/ui/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request) {
	clearCookie(w)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/ui/", MaxAge: -1, HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode})
}

type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// page is what every template gets.
type page struct {
	Title, Page, Org, Role, Error string

	Denials     userapi.Denials
	Usage       userapi.Usage
	Chart       chart
	BucketLabel string
	Job         string

	Query   userapi.AuditQuery
	Results []string
	Events  userapi.AuditPage
	Next    string

	Allowlists userapi.Allowlists
}

func (u *UI) base(r *http.Request, title, name string) page {
	p := page{Title: title, Page: name}
	if id, ok := authn.IdentityFrom(r.Context()); ok {
		p.Org, p.Role = id.OrgID, string(id.Role)
	}
	return p
}

func (u *UI) render(w http.ResponseWriter, status int, name string, p page) {
	var buf bytes.Buffer
	if err := u.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		u.log.Error("render page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail renders a query error: a refused parameter as 400 with its message,
// anything else as 500 with the details only in the log.
func (u *UI) fail(w http.ResponseWriter, r *http.Request, p page, err error) {
	var pe *userapi.ParamError
	if errors.As(err, &pe) {
		p.Error = pe.Error()
		u.render(w, http.StatusBadRequest, p.Page, p)
		return
	}
	u.log.Error("security page query failed", "request_id", authn.RequestID(r), "page", p.Page, "err", err)
	p.Title, p.Error = "Something went wrong", "The query failed. Try again, or narrow the time range."
	u.render(w, http.StatusInternalServerError, "error", p)
}

func (u *UI) overview(w http.ResponseWriter, r *http.Request) {
	p := u.base(r, "Denials and usage", "overview")
	org, err := userapi.OrgOf(r.Context())
	if err != nil {
		u.fail(w, r, p, err)
		return
	}
	q, _, err := u.api.ParseDenialQuery(r)
	if err != nil {
		u.fail(w, r, p, err)
		return
	}
	if p.Denials, err = u.api.DenialsOf(r.Context(), org, q); err != nil {
		u.fail(w, r, p, err)
		return
	}
	if p.Usage, err = u.api.UsageOf(r.Context(), org, p.Denials.From, p.Denials.To, q.Job); err != nil {
		u.fail(w, r, p, err)
		return
	}
	p.Chart = newChart(p.Denials)
	p.BucketLabel = bucketLabel(time.Duration(p.Denials.BucketSeconds) * time.Second)
	p.Job = q.Job
	u.render(w, http.StatusOK, "overview", p)
}

func (u *UI) audit(w http.ResponseWriter, r *http.Request) {
	p := u.base(r, "Audit log", "audit")
	p.Results = []string{"SUCCESS", "FAILURE", "DENIED", "WOULD_DENY"}
	org, err := userapi.OrgOf(r.Context())
	if err != nil {
		u.fail(w, r, p, err)
		return
	}
	q, _, err := u.api.ParseAuditQuery(r, org)
	p.Query = q
	if err != nil {
		u.fail(w, r, p, err)
		return
	}
	q.Limit = min(q.Limit, 100)
	if p.Events, err = u.api.AuditEvents(r.Context(), org, q, userapi.AuditFilterKey(r)); err != nil {
		u.fail(w, r, p, err)
		return
	}
	if p.Events.NextCursor != "" {
		v := r.URL.Query()
		v.Set("cursor", p.Events.NextCursor)
		p.Next = "/ui/audit?" + v.Encode()
	}
	u.render(w, http.StatusOK, "audit", p)
}

func (u *UI) allowlists(w http.ResponseWriter, r *http.Request) {
	p := u.base(r, "Allowlists", "allowlists")
	org, err := userapi.OrgOf(r.Context())
	if err != nil {
		u.fail(w, r, p, err)
		return
	}
	if len(r.URL.Query()) > 0 {
		u.fail(w, r, p, &userapi.ParamError{Name: firstKey(r.URL.Query()), Msg: "this page takes no parameters"})
		return
	}
	p.Allowlists = u.api.AllowlistsOf(org, "")
	u.render(w, http.StatusOK, "allowlists", p)
}

// bucketLabel writes a bucket width as the bucket parameter takes it:
// "1h", "15m", "1h30m".
func bucketLabel(d time.Duration) string {
	s := d.String() // whole minutes: "1h0m0s", "10m0s", "1h30m0s"
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func firstKey(v url.Values) string {
	for k := range v {
		return k
	}
	return ""
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
