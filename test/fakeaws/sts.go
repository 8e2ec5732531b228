package fakeaws

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// STS is a fake AWS Security Token Service endpoint speaking the query
// protocol (POST form, Action=...&Version=2011-06-15, XML responses and
// the STS ErrorResponse shape). It serves AssumeRole and GetCallerIdentity.
//
// AssumeRole validates its parameters like STS does (session name pattern
// and length, duration bounds, policy size and JSON, tags, source
// identity), records each request, and issues random ASIA… credentials.
// GetCallerIdentity verifies the request's SigV4 signature with the issued
// secret and refuses expired credentials with ExpiredToken, so a test can
// prove that a client signed with exactly the credentials it was given.
//
// Serve it with httptest.NewServer and point the SDK at it with
// BaseEndpoint (or AWS_ENDPOINT_URL_STS).
type STS struct {
	mu sync.Mutex // guards the following
	// lifetime overrides the requested duration when non-zero.
	lifetime time.Duration
	roles    map[string]bool // if empty, any well-formed role ARN may be assumed
	failNext []stsFailure
	requests []AssumeRoleRequest
	issued   map[string]IssuedCredentials // by access key ID
	callers  []CallerIdentityCall
	now      func() time.Time
}

// AssumeRoleRequest is one AssumeRole call as received.
type AssumeRoleRequest struct {
	RoleARN         string
	RoleSessionName string
	Policy          string
	SourceIdentity  string
	DurationSeconds int               // 0 when absent
	Tags            map[string]string // session tags
	SignedBy        string            // access key ID of the caller
	Form            url.Values        // every parameter, for anything else
}

// IssuedCredentials are credentials the fake handed out.
type IssuedCredentials struct {
	AccessKeyID, SecretAccessKey, SessionToken string
	Expiration                                 time.Time
	AssumedRoleARN                             string
	Request                                    AssumeRoleRequest
}

// CallerIdentityCall is one GetCallerIdentity call that passed signature
// verification.
type CallerIdentityCall struct {
	AccessKeyID string
	At          time.Time
}

type stsFailure struct {
	status    int
	code, msg string
}

// NewSTS returns a fake that lets any role be assumed.
func NewSTS() *STS {
	return &STS{roles: map[string]bool{}, issued: map[string]IssuedCredentials{}, now: time.Now}
}

// SetLifetime makes credentials issued from now on live d, whatever
// DurationSeconds asked (STS's minimum is 15 minutes; tests of refresh need
// seconds). Zero restores the requested duration.
func (s *STS) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// AllowRoles restricts AssumeRole to these role ARNs; others get
// AccessDenied.
func (s *STS) AllowRoles(arns ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range arns {
		s.roles[a] = true
	}
}

// FailNextAssumeRole answers the next AssumeRole with this STS error code
// ("AccessDenied", "MalformedPolicyDocument", "PackedPolicyTooLarge",
// "RegionDisabledException", "ExpiredToken", …) and HTTP status 400 (403
// for AccessDenied).
func (s *STS) FailNextAssumeRole(code, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	status := http.StatusBadRequest
	if code == "AccessDenied" {
		status = http.StatusForbidden
	}
	s.failNext = append(s.failNext, stsFailure{status: status, code: code, msg: message})
}

// Requests returns every AssumeRole request received, oldest first,
// including refused ones.
func (s *STS) Requests() []AssumeRoleRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]AssumeRoleRequest(nil), s.requests...)
}

// LastRequest returns the latest AssumeRole request.
func (s *STS) LastRequest() (AssumeRoleRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.requests) == 0 {
		return AssumeRoleRequest{}, false
	}
	return s.requests[len(s.requests)-1], true
}

// Issued returns the credentials issued under an access key ID.
func (s *STS) Issued(accessKeyID string) (IssuedCredentials, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.issued[accessKeyID]
	return c, ok
}

// CallerIdentityCalls returns the verified GetCallerIdentity calls.
func (s *STS) CallerIdentityCalls() []CallerIdentityCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]CallerIdentityCall(nil), s.callers...)
}

const (
	stsXMLNS      = "https://sts.amazonaws.com/doc/2011-06-15/"
	stsVersion    = "2011-06-15"
	stsMaxBody    = 64 << 10
	stsMaxPolicy  = 2048
	stsRequestID  = "00000000-0000-4000-8000-00000000c0de"
	stsAccount    = "123456789012"
	stsMinSeconds = 900
	stsMaxSeconds = 43200
)

var (
	stsRoleARNRE  = regexp.MustCompile(`^arn:aws:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$`)
	stsNameRE     = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)
	stsTagKeyRE   = regexp.MustCompile(`^[\p{L}\p{Z}\p{N}_.:/=+\-@]{1,128}$`)
	stsTagValueRE = regexp.MustCompile(`^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$`)
	stsCredRE     = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([A-Z0-9]+)/(\d{8})/([a-z0-9-]+)/sts/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$`)
)

// ServeHTTP implements the query protocol.
func (s *STS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		stsError(w, http.StatusNotFound, "InvalidAction", "only POST / is served")
		return
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); ct != "application/x-www-form-urlencoded" {
		stsError(w, http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf("content type %q is not application/x-www-form-urlencoded", ct))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, stsMaxBody+1))
	if err != nil || len(body) > stsMaxBody {
		stsError(w, http.StatusBadRequest, "InvalidParameterValue", "unreadable or oversized body")
		return
	}
	m := stsCredRE.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil || r.Header.Get("X-Amz-Date") == "" {
		stsError(w, http.StatusBadRequest, "IncompleteSignature", "request is not SigV4-signed for sts")
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		stsError(w, http.StatusBadRequest, "InvalidParameterValue", "malformed form body")
		return
	}
	if v := form.Get("Version"); v != stsVersion {
		stsError(w, http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf("Version %q is not %s", v, stsVersion))
		return
	}
	switch a := form.Get("Action"); a {
	case "AssumeRole":
		s.assumeRole(w, form, m[1])
	case "GetCallerIdentity":
		s.getCallerIdentity(w, r, body, m)
	default:
		stsError(w, http.StatusBadRequest, "InvalidAction", fmt.Sprintf("action %q is not implemented by the fake", a))
	}
}

func (s *STS) assumeRole(w http.ResponseWriter, form url.Values, signer string) {
	req := AssumeRoleRequest{
		RoleARN:         form.Get("RoleArn"),
		RoleSessionName: form.Get("RoleSessionName"),
		Policy:          form.Get("Policy"),
		SourceIdentity:  form.Get("SourceIdentity"),
		Tags:            map[string]string{},
		SignedBy:        signer,
		Form:            form,
	}
	if d := form.Get("DurationSeconds"); d != "" {
		req.DurationSeconds, _ = strconv.Atoi(d)
	}
	for i := 1; ; i++ {
		k, ok := form[fmt.Sprintf("Tags.member.%d.Key", i)]
		if !ok {
			break
		}
		req.Tags[k[0]] = form.Get(fmt.Sprintf("Tags.member.%d.Value", i))
	}

	s.mu.Lock()
	s.requests = append(s.requests, req)
	var fail *stsFailure
	if len(s.failNext) > 0 {
		fail = &s.failNext[0]
		s.failNext = s.failNext[1:]
	}
	lifetime, roles := s.lifetime, len(s.roles)
	allowed := s.roles[req.RoleARN]
	s.mu.Unlock()
	if fail != nil {
		stsError(w, fail.status, fail.code, fail.msg)
		return
	}

	rm := stsRoleARNRE.FindStringSubmatch(req.RoleARN)
	switch {
	case rm == nil:
		stsError(w, http.StatusBadRequest, "ValidationError", fmt.Sprintf("1 validation error detected: Value '%s' at 'roleArn' failed to satisfy constraint: Member must be a role ARN", req.RoleARN))
		return
	case !stsNameRE.MatchString(req.RoleSessionName):
		stsError(w, http.StatusBadRequest, "ValidationError", fmt.Sprintf("1 validation error detected: Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64 and satisfy regular expression pattern: [\\w+=,.@-]*", req.RoleSessionName))
		return
	case req.SourceIdentity != "" && !stsNameRE.MatchString(req.SourceIdentity):
		stsError(w, http.StatusBadRequest, "ValidationError", "1 validation error detected: Value at 'sourceIdentity' failed to satisfy constraint")
		return
	case req.SourceIdentity != "" && strings.HasPrefix(strings.ToLower(req.SourceIdentity), "aws:"):
		stsError(w, http.StatusBadRequest, "InvalidParameterValue", "SourceIdentity must not start with aws:")
		return
	case form.Has("DurationSeconds") && (req.DurationSeconds < stsMinSeconds || req.DurationSeconds > stsMaxSeconds):
		stsError(w, http.StatusBadRequest, "ValidationError", fmt.Sprintf("1 validation error detected: Value '%d' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200", req.DurationSeconds))
		return
	case len(req.Policy) > stsMaxPolicy:
		stsError(w, http.StatusBadRequest, "ValidationError", fmt.Sprintf("1 validation error detected: Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to %d", stsMaxPolicy))
		return
	case req.Policy != "" && !json.Valid([]byte(req.Policy)):
		stsError(w, http.StatusBadRequest, "MalformedPolicyDocument", "The policy is not in the valid JSON format.")
		return
	case len(req.Tags) > 50:
		stsError(w, http.StatusBadRequest, "ValidationError", "Tags: member must have length less than or equal to 50")
		return
	case roles > 0 && !allowed:
		stsError(w, http.StatusForbidden, "AccessDenied", fmt.Sprintf("User: arn:aws:sts::%s:assumed-role/cordon-dispatcher/task is not authorized to perform: sts:AssumeRole on resource: %s", stsAccount, req.RoleARN))
		return
	}
	for k, v := range req.Tags {
		if !stsTagKeyRE.MatchString(k) || !stsTagValueRE.MatchString(v) || strings.HasPrefix(strings.ToLower(k), "aws:") {
			stsError(w, http.StatusBadRequest, "ValidationError", fmt.Sprintf("tag %q is not a valid session tag", k))
			return
		}
	}
	if lifetime == 0 {
		lifetime = time.Hour
		if req.DurationSeconds != 0 {
			lifetime = time.Duration(req.DurationSeconds) * time.Second
		}
	}

	now := s.clock()
	creds := IssuedCredentials{
		AccessKeyID:     "ASIA" + strings.ToUpper(stsRandHex(8)),
		SecretAccessKey: stsRandHex(20),
		SessionToken:    "FQoGZXIvYXdzE" + stsRandHex(64),
		Expiration:      now.Add(lifetime).UTC().Truncate(time.Second),
		AssumedRoleARN:  fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", rm[1], rm[2], req.RoleSessionName),
		Request:         req,
	}
	s.mu.Lock()
	s.issued[creds.AccessKeyID] = creds
	s.mu.Unlock()

	type credentialsXML struct {
		AccessKeyID     string `xml:"AccessKeyId"`
		SecretAccessKey string `xml:"SecretAccessKey"`
		SessionToken    string `xml:"SessionToken"`
		Expiration      string `xml:"Expiration"`
	}
	type response struct {
		XMLName xml.Name `xml:"AssumeRoleResponse"`
		XMLNS   string   `xml:"xmlns,attr"`
		Result  struct {
			SourceIdentity  string `xml:"SourceIdentity,omitempty"`
			AssumedRoleUser struct {
				Arn           string `xml:"Arn"`
				AssumedRoleID string `xml:"AssumedRoleId"`
			} `xml:"AssumedRoleUser"`
			Credentials      credentialsXML `xml:"Credentials"`
			PackedPolicySize int            `xml:"PackedPolicySize"`
		} `xml:"AssumeRoleResult"`
		RequestID string `xml:"ResponseMetadata>RequestId"`
	}
	var out response
	out.XMLNS = stsXMLNS
	out.Result.SourceIdentity = req.SourceIdentity
	out.Result.AssumedRoleUser.Arn = creds.AssumedRoleARN
	out.Result.AssumedRoleUser.AssumedRoleID = "AROA" + strings.ToUpper(stsRandHex(8)) + ":" + req.RoleSessionName
	out.Result.Credentials = credentialsXML{creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken, creds.Expiration.Format(time.RFC3339)}
	out.Result.PackedPolicySize = (len(req.Policy) + 20*len(req.Tags)) * 100 / stsMaxPolicy
	out.RequestID = stsRequestID
	stsXML(w, http.StatusOK, out)
}

// getCallerIdentity verifies the signature with the issued secret.
func (s *STS) getCallerIdentity(w http.ResponseWriter, r *http.Request, body []byte, m []string) {
	akid, region, signedHeaders := m[1], m[3], m[4]
	s.mu.Lock()
	creds, ok := s.issued[akid]
	s.mu.Unlock()
	if !ok {
		stsError(w, http.StatusForbidden, "InvalidClientTokenId", "The security token included in the request is invalid.")
		return
	}
	if r.Header.Get("X-Amz-Security-Token") != creds.SessionToken {
		stsError(w, http.StatusForbidden, "InvalidClientTokenId", "The security token included in the request is invalid.")
		return
	}
	now := s.clock()
	if !now.Before(creds.Expiration) {
		stsError(w, http.StatusForbidden, "ExpiredToken", "The security token included in the request is expired")
		return
	}
	signedAt, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		stsError(w, http.StatusBadRequest, "IncompleteSignature", "bad X-Amz-Date")
		return
	}
	// Re-sign the same request with the issued secret and compare.
	check, _ := http.NewRequestWithContext(context.Background(), r.Method, "http://"+r.Host+r.URL.RequestURI(), strings.NewReader(string(body)))
	check.Host = r.Host
	check.ContentLength = 0
	for _, h := range strings.Split(signedHeaders, ";") {
		switch h {
		case "host":
		case "content-length":
			check.ContentLength = r.ContentLength
		default:
			check.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	sum := sha256.Sum256(body)
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{
		AccessKeyID: creds.AccessKeyID, SecretAccessKey: creds.SecretAccessKey, SessionToken: creds.SessionToken,
	}, check, hex.EncodeToString(sum[:]), "sts", region, signedAt)
	if err != nil || check.Header.Get("Authorization") != r.Header.Get("Authorization") {
		stsError(w, http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
		return
	}
	s.mu.Lock()
	s.callers = append(s.callers, CallerIdentityCall{AccessKeyID: akid, At: now})
	s.mu.Unlock()

	type response struct {
		XMLName xml.Name `xml:"GetCallerIdentityResponse"`
		XMLNS   string   `xml:"xmlns,attr"`
		Result  struct {
			Arn     string `xml:"Arn"`
			UserID  string `xml:"UserId"`
			Account string `xml:"Account"`
		} `xml:"GetCallerIdentityResult"`
		RequestID string `xml:"ResponseMetadata>RequestId"`
	}
	var out response
	out.XMLNS = stsXMLNS
	out.Result.Arn = creds.AssumedRoleARN
	out.Result.UserID = "AROAFAKE:" + creds.Request.RoleSessionName
	out.Result.Account = stsAccount
	out.RequestID = stsRequestID
	stsXML(w, http.StatusOK, out)
}

func (s *STS) clock() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now()
}

func stsRandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func stsXML(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-RequestId", stsRequestID)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(v)
}

// stsError writes the STS ErrorResponse shape.
func stsError(w http.ResponseWriter, status int, code, msg string) {
	type errorResponse struct {
		XMLName xml.Name `xml:"ErrorResponse"`
		XMLNS   string   `xml:"xmlns,attr"`
		Error   struct {
			Type    string `xml:"Type"`
			Code    string `xml:"Code"`
			Message string `xml:"Message"`
		} `xml:"Error"`
		RequestID string `xml:"RequestId"`
	}
	var e errorResponse
	e.XMLNS = stsXMLNS
	e.Error.Type = "Sender"
	e.Error.Code = code
	e.Error.Message = msg
	e.RequestID = stsRequestID
	stsXML(w, status, e)
}
