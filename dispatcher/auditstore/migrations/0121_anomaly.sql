-- Anomaly detection (issue 6): each org's response policy and the runs
-- flagged, at most once per run and phase. Owned by dispatcher/anomaly.
SET LOCAL ROLE cordon_owner;

-- anomaly_policies: what to do with a running run whose live usage is
-- anomalous. An org without a row is 'notify' (flag and audit only).
CREATE TABLE anomaly_policies (
  org_id     text PRIMARY KEY REFERENCES orgs (org_id),
  action     text NOT NULL DEFAULT 'notify' CHECK (action IN ('notify', 'terminate')),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- anomaly_flags: the primary key makes a flag, and its audit event, happen
-- once per run and phase even when replicas check the same run at once.
CREATE TABLE anomaly_flags (
  org_id     text NOT NULL,
  run_id     text NOT NULL,
  phase      text NOT NULL CHECK (phase IN ('live', 'final')),
  job_id     text NOT NULL,
  metrics    jsonb NOT NULL,
  flagged_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, run_id, phase)
);

-- The baseline query reads a job's latest final reports.
CREATE INDEX usage_reports_job_final ON usage_reports (org_id, job_id, ended_at DESC) WHERE final;

CREATE POLICY org_isolation ON anomaly_policies
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON anomaly_flags
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
ALTER TABLE anomaly_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE anomaly_policies FORCE ROW LEVEL SECURITY;
ALTER TABLE anomaly_flags ENABLE ROW LEVEL SECURITY;
ALTER TABLE anomaly_flags FORCE ROW LEVEL SECURITY;

GRANT SELECT, INSERT, UPDATE ON anomaly_policies TO cordon_service;
GRANT SELECT, INSERT ON anomaly_flags TO cordon_service;
