// Package fakeaws serves local, wire-compatible stand-ins for the AWS APIs
// Cordon calls, so tests run the real aws-sdk-go-v2 clients against them
// (BaseEndpoint override, static test credentials). AWS itself is never
// reachable from tests.
//
// It speaks the wire protocol (here: Secrets Manager's JSON 1.1 with
// X-Amz-Target, error bodies with __type) and checks that requests are
// SigV4-signed, but it does not verify signatures or implement IAM: access
// is whatever the test configures. It is not for production use.
package fakeaws

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// SecretsManager is a fake AWS Secrets Manager endpoint. Configure it with
// Put, Deny and Throttle, then serve it with httptest.NewServer.
type SecretsManager struct {
	// NoBatch makes BatchGetSecretValue fail with AccessDeniedException for
	// the whole call, like a role that lacks secretsmanager:BatchGetSecretValue.
	// If false, batch calls are served.
	NoBatch bool

	mu       sync.Mutex // guards the following
	secrets  map[string]secret
	denied   map[string]bool
	throttle int            // requests still to answer with ThrottlingException
	calls    map[string]int // by operation
}

type secret struct {
	str *string
	bin []byte
}

// NewSecretsManager returns an empty fake.
func NewSecretsManager() *SecretsManager {
	return &SecretsManager{secrets: map[string]secret{}, denied: map[string]bool{}, calls: map[string]int{}}
}

// Put stores a string secret under name (for example "/prod/acme/key").
func (s *SecretsManager) Put(name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[name] = secret{str: &value}
}

// PutBinary stores a binary secret under name.
func (s *SecretsManager) PutBinary(name string, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[name] = secret{bin: value}
}

// Deny makes reads of name fail with AccessDeniedException.
func (s *SecretsManager) Deny(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denied[name] = true
}

// Throttle answers the next n requests with ThrottlingException.
func (s *SecretsManager) Throttle(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = n
}

// Calls is how many requests of an operation ("GetSecretValue",
// "BatchGetSecretValue") arrived, throttled ones included.
func (s *SecretsManager) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

const targetPrefix = "secretsmanager."

// maxBody bounds a request body; real requests are a few hundred bytes.
const maxBody = 1 << 20

// ServeHTTP implements the JSON 1.1 protocol.
func (s *SecretsManager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		writeError(w, http.StatusNotFound, "UnknownOperationException", "only POST / is served")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		writeError(w, http.StatusBadRequest, "SerializationException", fmt.Sprintf("content type %q is not application/x-amz-json-1.1", ct))
		return
	}
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential=") || !strings.Contains(auth, "/secretsmanager/aws4_request") ||
		!strings.Contains(auth, "Signature=") || r.Header.Get("X-Amz-Date") == "" {
		writeError(w, http.StatusBadRequest, "IncompleteSignatureException", "request is not SigV4-signed for secretsmanager")
		return
	}
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)
	if !ok {
		writeError(w, http.StatusBadRequest, "UnknownOperationException", "missing or foreign X-Amz-Target")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		writeError(w, http.StatusBadRequest, "SerializationException", "unreadable or oversized body")
		return
	}

	s.mu.Lock()
	s.calls[op]++
	throttled := s.throttle > 0
	if throttled {
		s.throttle--
	}
	s.mu.Unlock()
	if throttled {
		writeError(w, http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
		return
	}

	switch op {
	case "GetSecretValue":
		s.getSecretValue(w, body)
	case "BatchGetSecretValue":
		s.batchGetSecretValue(w, body)
	default:
		writeError(w, http.StatusBadRequest, "UnknownOperationException", "operation "+op+" is not implemented by the fake")
	}
}

// entry is SecretValueEntry / GetSecretValueResponse on the wire.
type entry struct {
	ARN           string   `json:"ARN"`
	Name          string   `json:"Name"`
	SecretString  *string  `json:"SecretString,omitempty"`
	SecretBinary  []byte   `json:"SecretBinary,omitempty"` // base64, as the wire wants
	VersionID     string   `json:"VersionId"`
	VersionStages []string `json:"VersionStages"`
	CreatedDate   float64  `json:"CreatedDate"`
}

type apiError struct {
	code, msg string
}

// lookup returns the entry for id or the error the real service gives.
func (s *SecretsManager) lookup(id string) (entry, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.denied[id] {
		return entry{}, &apiError{"AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/test is not authorized to perform: secretsmanager:GetSecretValue on resource: " + id + " because no identity-based policy allows the secretsmanager:GetSecretValue action"}
	}
	sec, ok := s.secrets[id]
	if !ok {
		return entry{}, &apiError{"ResourceNotFoundException", "Secrets Manager can't find the specified secret."}
	}
	return entry{
		ARN:           "arn:aws:secretsmanager:us-east-1:123456789012:secret:" + id + "-AbCdEf",
		Name:          id,
		SecretString:  sec.str,
		SecretBinary:  sec.bin,
		VersionID:     "00000000-0000-4000-8000-000000000001",
		VersionStages: []string{"AWSCURRENT"},
		CreatedDate:   float64(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()),
	}, nil
}

func (s *SecretsManager) getSecretValue(w http.ResponseWriter, body []byte) {
	var in struct {
		SecretID string `json:"SecretId"`
	}
	if err := json.Unmarshal(body, &in); err != nil || in.SecretID == "" {
		writeError(w, http.StatusBadRequest, "InvalidParameterException", "SecretId is required")
		return
	}
	e, aerr := s.lookup(in.SecretID)
	if aerr != nil {
		writeError(w, http.StatusBadRequest, aerr.code, aerr.msg)
		return
	}
	writeJSON(w, e)
}

func (s *SecretsManager) batchGetSecretValue(w http.ResponseWriter, body []byte) {
	if s.NoBatch {
		writeError(w, http.StatusBadRequest, "AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/test is not authorized to perform: secretsmanager:BatchGetSecretValue")
		return
	}
	var in struct {
		SecretIDList []string `json:"SecretIdList"`
		Filters      []any    `json:"Filters"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		writeError(w, http.StatusBadRequest, "InvalidParameterException", "malformed request")
		return
	}
	if len(in.Filters) > 0 || len(in.SecretIDList) == 0 || len(in.SecretIDList) > 20 {
		writeError(w, http.StatusBadRequest, "InvalidParameterException", "the fake takes SecretIdList of 1 to 20 IDs and no Filters")
		return
	}
	type apiErrorType struct {
		SecretID  string `json:"SecretId"`
		ErrorCode string `json:"ErrorCode"`
		Message   string `json:"Message"`
	}
	out := struct {
		SecretValues []entry        `json:"SecretValues"`
		Errors       []apiErrorType `json:"Errors"`
	}{SecretValues: []entry{}, Errors: []apiErrorType{}}
	for _, id := range in.SecretIDList {
		e, aerr := s.lookup(id)
		if aerr != nil {
			out.Errors = append(out.Errors, apiErrorType{SecretID: id, ErrorCode: aerr.code, Message: aerr.msg})
			continue
		}
		out.SecretValues = append(out.SecretValues, e)
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", "00000000-0000-4000-8000-00000000f00d")
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", "00000000-0000-4000-8000-00000000f00d")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}
