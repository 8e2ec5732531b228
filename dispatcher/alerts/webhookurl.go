package alerts

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// ErrWebhookNotAllowed means a webhook URL is not covered by the org's
// allowlist file's webhooks: list.
var ErrWebhookNotAllowed = errors.New("webhook not allowed by the org's allowlist")

// CheckWebhook reports whether raw may receive the org's alerts: an https
// URL without user information, query or fragment, whose host and port
// equal one of f's webhooks and whose path lies under that webhook's path
// (whole segments). A nil f allows nothing.
func CheckWebhook(f *allowlist.File, raw string) error {
	if f == nil {
		return fmt.Errorf("%w: the org has no allowlist file", ErrWebhookNotAllowed)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("%w: not a valid URL", ErrWebhookNotAllowed)
	case u.Scheme != "https":
		return fmt.Errorf("%w: scheme %q, want https", ErrWebhookNotAllowed, u.Scheme)
	case u.User != nil:
		return fmt.Errorf("%w: the URL carries user information; remove it", ErrWebhookNotAllowed)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return fmt.Errorf("%w: the URL has a query or fragment", ErrWebhookNotAllowed)
	case strings.Contains(raw, `\`):
		return fmt.Errorf("%w: the URL contains a backslash", ErrWebhookNotAllowed)
	}
	host := u.Hostname()
	port := uint16(443)
	if ps := u.Port(); ps != "" {
		v, err := strconv.Atoi(ps)
		if err != nil || v < 1 || v > 65535 || ps[0] == '0' {
			return fmt.Errorf("%w: port %q", ErrWebhookNotAllowed, ps)
		}
		port = uint16(v)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	for seg := range strings.SplitSeq(path, "/") {
		if d, err := url.PathUnescape(seg); err != nil || d == "." || d == ".." || strings.ContainsAny(d, `/\`) {
			return fmt.Errorf("%w: dot, encoded slash or invalid segment in the path", ErrWebhookNotAllowed)
		}
	}
	for _, w := range f.Webhooks {
		if w.Host != host || w.Port != port {
			continue
		}
		if path == w.Path || strings.HasPrefix(path, strings.TrimSuffix(w.Path, "/")+"/") {
			return nil
		}
	}
	// The path is left out: a webhook path may be a credential (Slack's are).
	return fmt.Errorf("%w: https://%s:%d/... is not under any webhooks: entry of org %s's allowlist file; list it there first", ErrWebhookNotAllowed, host, port, f.Org)
}
