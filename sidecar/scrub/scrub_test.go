package scrub

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/url"
	"os/exec"
	"strings"
	"testing"
)

// scrubAll runs in through a fresh Writer with the given write sizes (1 if
// sizes is nil... cycling through sizes) and returns the output.
func scrubAll(t testing.TB, s *Scrubber, in string, sizes []int) string {
	t.Helper()
	var out bytes.Buffer
	w := s.NewWriter(&out)
	p := []byte(in)
	for i := 0; len(p) > 0; i++ {
		n := len(p)
		if len(sizes) > 0 {
			n = min(max(sizes[i%len(sizes)], 1), len(p))
		}
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out.String()
}

func mustNew(t testing.TB, cfg Config) *Scrubber {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

const (
	rpcKey = "k3y-Abc123+/xyz=!?"
	pemKey = "-----BEGIN TEST KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END TEST KEY-----\n"
)

func TestScrub(t *testing.T) {
	s := mustNew(t, Config{Secrets: []Secret{{Name: "MONAD_RPC_KEY", Value: rpcKey}, {Name: "PEM", Value: pemKey}}})
	b64 := func(enc *base64.Encoding, v string) string { return enc.EncodeToString([]byte(v)) }
	tests := []struct {
		name, in, want string
	}{
		{"plain text untouched", "hello world\n", "hello world\n"},
		{"raw", "key=" + rpcKey + " done\n", "key=[REDACTED:MONAD_RPC_KEY] done\n"},
		{"hex lower", "x " + hex.EncodeToString([]byte(rpcKey)) + " y", "x [REDACTED:MONAD_RPC_KEY] y"},
		{"hex upper", "x " + strings.ToUpper(hex.EncodeToString([]byte(rpcKey))) + " y", "x [REDACTED:MONAD_RPC_KEY] y"},
		{"base64 std", "x " + b64(base64.StdEncoding, rpcKey) + " y", "x [REDACTED:MONAD_RPC_KEY] y"},
		{"base64 url unpadded", "x " + b64(base64.RawURLEncoding, rpcKey) + " y", "x [REDACTED:MONAD_RPC_KEY] y"},
		{"query escape", "u?k=" + url.QueryEscape(rpcKey) + "&z", "u?k=[REDACTED:MONAD_RPC_KEY]&z"},
		{"path escape", "/p/" + url.PathEscape(rpcKey) + "/z", "/p/[REDACTED:MONAD_RPC_KEY]/z"},
		{"ansi around", "\x1b[31m" + rpcKey + "\x1b[0m", "\x1b[31m[REDACTED:MONAD_RPC_KEY]\x1b[0m"},
		{"pem crlf", "a\n" + strings.ReplaceAll(pemKey, "\n", "\r\n") + "b", "a\n[REDACTED:PEM]b"},
		{"pem line by line with prefixes", "log: MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n", "log: [REDACTED:PEM]\n"},
		{"seed api_key", `{"api_key": "sk_live_abc123xyz"}`, `{"api_key": "sk_live_***REDACTED***"}`},
		{"stripe alone", "charge with sk_test_4eC39HqLyjWDarjtT1zdp7dc now", "charge with sk_test_***REDACTED*** now"},
		{"aws key id", "id AKIAIOSFODNN7EXAMPLE end", "id AKIA***REDACTED*** end"},
		{"aws secret in context", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n", "aws_secret_access_key = ***REDACTED***\n"},
		{"github token", "t=ghp_16C7e42F292c6912E7710c838347Ae178B4a.", "t=ghp_***REDACTED***."},
		{"github pat", "github_pat_11ABCDEFG0123456789_abcdefXYZ rest", "github_pat_***REDACTED*** rest"},
		{"slack token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx ok", "xoxb-***REDACTED*** ok"},
		{"slack webhook", "post https://hooks.slack.com/services/T000/B000/XXXX now", "post https://hooks.slack.com/***REDACTED*** now"},
		{"jwt", "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_nature ok", "jwt eyJ***REDACTED*** ok"},
		{"base64 json not jwt", "blob eyJhIjoxfQ== ok", "blob eyJhIjoxfQ== ok"},
		{"pem private key block", "k:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\ndef==\n-----END RSA PRIVATE KEY-----\nafter", "k:\n-----BEGIN RSA PRIVATE KEY-----***REDACTED***-----END RSA PRIVATE KEY-----\nafter"},
		{"pem public key kept", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"},
		{"password=", "login password=hunter2!! ok", "login password=***REDACTED*** ok"},
		{"DB_PASSWORD", "DB_PASSWORD='s3cr3t pass' ok", "DB_PASSWORD='***REDACTED***' ok"},
		{"token:", "token: abc.def-ghi\n", "token: ***REDACTED***\n"},
		{"authorization bearer", "Authorization: Bearer abc.def.ghi\n", "Authorization: Bearer ***REDACTED***\n"},
		{"bearer alone", `curl -H "Bearer Zm9vYmFy" x`, `curl -H "Bearer ***REDACTED***" x`},
		{"json escaped quotes", `{"password": "a\"b c"}`, `{"password": "***REDACTED***"}`},
		{"json inside json", `"{\"token\":\"abcdef\"}"`, `"{\"token\":\"***REDACTED***\"}"`},
		{"prose not redacted", "max_tokens=100 passwords are tokens\n", "max_tokens=100 passwords are tokens\n"},
		{"email", "mail user@example.com now", "mail user***@example.com now"},
		{"email long local", "alice.smith@mail.example.org.", "alic***@mail.example.org."},
		{"not email", "pkg@1.2.3 and @mention", "pkg@1.2.3 and @mention"},
		{"url password", "connect postgres://app:hunter2pw@db.internal:5432/x ok", "connect postgres://app:***REDACTED***@db.internal:5432/x ok"},
		{"url password with email host", "amqp://u:pass.word@mq.example.com/", "amqp://u:***REDACTED***@mq.example.com/"},
		{"url without password", "https://example.com/a:b@c and git://user@host", "https://example.com/a:b@c and git://user@host"},
		{"secret at end", "tail " + rpcKey, "tail [REDACTED:MONAD_RPC_KEY]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, sizes := range [][]int{nil, {1}, {2, 3, 5, 7}} {
				if got := scrubAll(t, s, tc.in, sizes); got != tc.want {
					t.Errorf("sizes %v: got %q, want %q", sizes, got, tc.want)
				}
			}
		})
	}
}

func TestOtherEscapers(t *testing.T) {
	v := "a b/c'd(e)*f~g!h+i&j=k"
	s := mustNew(t, Config{Secrets: []Secret{{Name: "V", Value: v}}, DisableRules: true, DisableEmailMask: true})
	tests := []struct{ name, in string }{
		{"encodeURIComponent", "a%20b%2Fc'd(e)*f~g!h%2Bi%26j%3Dk"},
		{"python quote", "a%20b/c%27d%28e%29%2Af~g%21h%2Bi%26j%3Dk"},
		{"python quote_plus", "a+b%2Fc%27d%28e%29%2Af~g%21h%2Bi%26j%3Dk"},
		{"php json_encode", `a b\/c'd(e)*f~g!h+i&j=k`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := scrubAll(t, s, "<"+tc.in+">", nil); got != "<[REDACTED:V]>" {
				t.Errorf("got %q, want %q", got, "<[REDACTED:V]>")
			}
		})
	}
}

// TestHexDumpTools pipes a secret through the real dump tools.
func TestHexDumpTools(t *testing.T) {
	v := "Dump-me-if-you-can:0123456789-abcdefXYZ"
	s := mustNew(t, Config{Secrets: []Secret{{Name: "V", Value: v}}, DisableRules: true, DisableEmailMask: true})
	tools := [][]string{{"xxd"}, {"xxd", "-p"}, {"xxd", "-g1"}, {"od", "-An", "-tx1"}, {"hexdump", "-C"}}
	for _, tool := range tools {
		t.Run(strings.Join(tool, " "), func(t *testing.T) {
			if _, err := exec.LookPath(tool[0]); err != nil {
				t.Skipf("%s not installed (Debian: xxd, bsdextrautils): %v", tool[0], err)
			}
			cmd := exec.Command(tool[0], tool[1:]...)
			cmd.Stdin = strings.NewReader(v + "\n")
			dump, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %v", tool, err)
			}
			got := scrubAll(t, s, string(dump), []int{7})
			// No row of 4+ secret bytes may survive in any dump notation.
			for off := 0; off+4 <= len(v); off += 16 {
				row := v[off:min(off+16, len(v))]
				if len(row) < 4 {
					break
				}
				h := hex.EncodeToString([]byte(row))
				for _, frag := range []string{h[:8], h[:2] + " " + h[2:4] + " " + h[4:6], h[:4] + " " + h[4:8], row[:4]} {
					if strings.Contains(got, frag) {
						t.Errorf("row at %d: %q survived:\n%s", off, frag, got)
					}
				}
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	v := `a b$c"d'e!f&g(h)i*j;k<l>m?n[o]p\q` + "`r{s}t|u~v#w=x^y,z._+:@%/-"
	s := mustNew(t, Config{Secrets: []Secret{{Name: "V", Value: v}}, DisableRules: true, DisableEmailMask: true})
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skipf("bash not installed: %v", err)
	}
	cmd := exec.Command(bash, "-c", `printf '%q\n' "$V"`)
	cmd.Env = []string{"V=" + v}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	if got := scrubAll(t, s, string(out), []int{3}); got != "[REDACTED:V]\n" {
		t.Errorf("printf %%q output %q: got %q, want %q", out, got, "[REDACTED:V]\n")
	}
}

func TestWrappedBase64(t *testing.T) {
	s := mustNew(t, Config{Secrets: []Secret{{Name: "PEM", Value: pemKey}}, DisableRules: true, DisableEmailMask: true})
	for _, width := range []int{64, 76} {
		enc := base64.StdEncoding.EncodeToString([]byte(pemKey + "\n")) // echo "$PEM" | base64
		var wrapped strings.Builder
		for i := 0; i < len(enc); i += width {
			wrapped.WriteString(enc[i:min(i+width, len(enc))] + "\n")
		}
		got := scrubAll(t, s, wrapped.String(), []int{5})
		for _, line := range strings.Split(wrapped.String(), "\n") {
			if len(line) > 4 && strings.Contains(got, line[:len(line)-4]) {
				t.Errorf("width %d: line %q survived in %q", width, line, got)
			}
		}
	}
}

func TestJSONForms(t *testing.T) {
	v := "p<a>&ss\"wörd\x01\U0001F600x"
	s := mustNew(t, Config{Secrets: []Secret{{Name: "V", Value: v}}, DisableRules: true, DisableEmailMask: true})
	b, _ := json.Marshal(map[string]string{"v": v})
	if got := scrubAll(t, s, string(b), []int{1}); got != `{"v":"[REDACTED:V]"}` {
		t.Errorf("got %q, want %q", got, `{"v":"[REDACTED:V]"}`)
	}
	ascii := asciiJSON(v, false)
	if got := scrubAll(t, s, ascii, nil); got != "[REDACTED:V]" {
		t.Errorf("ascii form %q: got %q, want %q", ascii, got, "[REDACTED:V]")
	}
}

func TestBase64Alignments(t *testing.T) {
	secret := "Sup3rS3cretValue!"
	s := mustNew(t, Config{Secrets: []Secret{{Name: "S", Value: secret}}, DisableRules: true, DisableEmailMask: true})
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		for pre := 0; pre < 3; pre++ {
			for post := 0; post < 3; post++ {
				data := strings.Repeat("\xfb", pre) + secret + strings.Repeat("\xff", post)
				e := enc.EncodeToString([]byte(data))
				got := scrubAll(t, s, "<"+e+">", []int{3})
				if leaks(got, secret) {
					t.Errorf("pre %d post %d %q: got %q, leaks the secret", pre, post, e, got)
				}
				if !strings.Contains(got, "[REDACTED:S]") {
					t.Errorf("pre %d post %d: got %q, want a redaction", pre, post, got)
				}
			}
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"short", Config{Secrets: []Secret{{Name: "PIN", Value: "1234"}}}, `secret "PIN" is 4 bytes`},
		{"bad name", Config{Secrets: []Secret{{Name: "a b", Value: "abcdefgh"}}}, `secret name "a b"`},
		{"marker collision", Config{Secrets: []Secret{{Name: "X", Value: "REDACTED"}}}, `secret "X" occurs in the redaction marker`},
		{"bad marker", Config{Marker: "x\n"}, "non-printable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			for _, sec := range tc.cfg.Secrets {
				if strings.Contains(err.Error(), sec.Value) {
					t.Errorf("error %q contains the secret value", err)
				}
			}
		})
	}
	var se *ShortSecretError
	if _, err := New(Config{Secrets: []Secret{{Name: "PIN", Value: "1"}}}); !errors.As(err, &se) || se.Name != "PIN" {
		t.Errorf("got %v, want a *ShortSecretError for PIN", err)
	}
	s, err := New(Config{Secrets: []Secret{{Name: "PIN", Value: "1"}}, IgnoreShortSecrets: true})
	if err != nil || len(s.Unscrubbed()) != 1 || s.Unscrubbed()[0] != "PIN" {
		t.Errorf("IgnoreShortSecrets: got %v, %v; want PIN unscrubbed", s, err)
	}
}

func TestHoldBack(t *testing.T) {
	s := mustNew(t, Config{Secrets: []Secret{{Name: "K", Value: "zq9-SECRET-zq9"}}})
	var out bytes.Buffer
	w := s.NewWriter(&out)
	step := func(in, want string) {
		t.Helper()
		if _, err := w.Write([]byte(in)); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); got != want {
			t.Fatalf("after writing %q: got %q, want %q", in, got, want)
		}
	}
	step("ordinary line\n", "ordinary line\n")
	step("x zq9-SEC", "ordinary line\nx ")                        // live prefix held
	step("RET-zq9 y\n", "ordinary line\nx [REDACTED:K] y\n")      // completed
	step("zq9-SECRET", "ordinary line\nx [REDACTED:K] y\n")       // held
	step("!\n", "ordinary line\nx [REDACTED:K] y\nzq9-SECRET!\n") // released: not the secret
	step("end zq9", "ordinary line\nx [REDACTED:K] y\nzq9-SECRET!\nend ")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "ordinary line\nx [REDACTED:K] y\nzq9-SECRET!\nend zq9"; got != want {
		t.Fatalf("after Close: got %q, want %q", got, want)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: got %v, want ErrClosed", err)
	}
	if got := w.Redactions(); got != 1 {
		t.Fatalf("Redactions: got %d, want 1", got)
	}
}

// leaks reports whether out contains secret or any of its forms.
func leaks(out, secret string) bool {
	for _, f := range secretForms(secret) {
		if strings.Contains(out, f) {
			return true
		}
	}
	return false
}
