// Package scrub redacts secrets from a job's output as it streams.
//
// It is for the stdout and stderr of an untrusted job: `cordon-sidecar run`
// puts a Writer between each stream and the container log. It is not an
// access control: it cannot stop a job that wants to exfiltrate a secret
// (see "What it cannot catch").
package scrub
