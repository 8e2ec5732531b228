package secrets

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// maxFileBytes bounds a secrets file: far above any real set of secrets,
// small enough that a wrong path (a log, a device) fails fast.
const maxFileBytes = 4 << 20

// File is a Provider backed by a local JSON file {"name": "value"}. It only
// reads the file; it never writes or removes it.
type File struct {
	// Path is the file to read. Required.
	Path string
}

var _ Provider = (*File)(nil)

// ReadFile reads and decodes the whole secrets file. Values must be JSON
// strings; duplicate names are errors. Errors name the file and the secret,
// never a value (a JSON syntax error reports only its offset).
func ReadFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read secrets file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read secrets file %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("read secrets file %s: larger than %d bytes", path, maxFileBytes)
	}
	m, err := DecodeJSON(data)
	if err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", path, err)
	}
	return m, nil
}

// DecodeJSON decodes {"name": "value", ...}. It rejects anything else
// (arrays, nested objects, numbers, duplicate names, trailing data) with an
// error that holds no part of the input but names and offsets.
func DecodeJSON(data []byte) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not a JSON object %s", syntaxWhere(dec, err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("not a JSON object: want {\"name\": \"value\"}")
	}
	out := make(map[string]string)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON %s", syntaxWhere(dec, err))
		}
		name, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("invalid JSON at offset %d", dec.InputOffset())
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("secret %q is defined twice", name)
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, fmt.Errorf("secret %q: invalid JSON %s", name, syntaxWhere(dec, err))
		}
		v, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("secret %q: value must be a JSON string", name)
		}
		out[name] = v
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fmt.Errorf("invalid JSON %s", syntaxWhere(dec, err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the JSON object at offset %d", dec.InputOffset())
	}
	return out, nil
}

// syntaxWhere describes a decode error by offset only: json's messages can
// quote input bytes, which may be part of a secret.
func syntaxWhere(dec *json.Decoder, err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "(unexpected end of input)"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("at offset %d", se.Offset)
	}
	return fmt.Sprintf("at offset %d", dec.InputOffset())
}

// Fetch reads the file and returns the names asked for. A name not in the
// file is an error wrapping ErrNotFound. If names is empty, every secret in
// the file is returned (local runs declare their secrets by the file).
func (f *File) Fetch(ctx context.Context, names []string) (map[string]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	all, err := ReadFile(f.Path)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return all, nil
	}
	out := make(map[string]string, len(names))
	var missing []string
	for _, n := range names {
		v, ok := all[n]
		if !ok {
			missing = append(missing, n)
			continue
		}
		out[n] = v
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("secrets file %s: secret %q: %w", f.Path, missing[0], ErrNotFound)
	}
	return out, nil
}
