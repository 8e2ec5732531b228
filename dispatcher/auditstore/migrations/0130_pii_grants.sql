-- PII grants (issue 9, seeds/000 "PII gating"): a job may use a PII
-- dataset only under an explicit grant. A grant names one org, one job and
-- one S3 location prefix in canonical s3://bucket/prefix/ form; it covers
-- every location under that prefix (segment-aligned, since every prefix
-- ends in "/"). Read by dispatcher/credapi (PGGrants) when it mints a run's
-- credentials; the grant ID it finds is named in the issuance audit event.
SET LOCAL ROLE cordon_owner;

CREATE TABLE pii_grants (
  org_id     text NOT NULL REFERENCES orgs (org_id),
  grant_id   text NOT NULL CHECK (grant_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
  job_id     text NOT NULL CHECK (job_id ~ '^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$'),
  -- The canonical form internal/datasets produces: no wildcards, no policy
  -- variables, at least one prefix segment, each ending in "/".
  location   text NOT NULL CHECK (location ~ '^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([A-Za-z0-9._=-]+/)+$'
                                  AND location !~ '/\.{1,2}/' AND length(location) <= 512),
  granted_by text NOT NULL CHECK (granted_by <> ''),
  granted_at timestamptz NOT NULL DEFAULT now(),
  -- NULL: does not expire.
  expires_at timestamptz,
  -- Set instead of deleting, so who held a grant when stays answerable.
  revoked_at timestamptz,
  PRIMARY KEY (org_id, grant_id),
  CHECK (expires_at IS NULL OR expires_at > granted_at)
);
CREATE INDEX pii_grants_job ON pii_grants (org_id, job_id) WHERE revoked_at IS NULL;

CREATE POLICY org_isolation ON pii_grants
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
ALTER TABLE pii_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE pii_grants FORCE ROW LEVEL SECURITY;

-- The service reads grants when minting; granting and revoking (an admin
-- action through the user API) insert and update.
GRANT SELECT, INSERT, UPDATE ON pii_grants TO cordon_service;
