-- Admission (issue 6, "Quotas, alerts, abuse response"): per-org quotas,
-- one lease per admitted run, and termination orders that sidecars pick up
-- through their heartbeat. Owned by dispatcher/admission.
SET LOCAL ROLE cordon_owner;

-- org_quotas holds each org's limits. An org without a row gets the
-- defaults (seeds/002 "Per-Tenant Limits": 100 concurrent executions; 1,200
-- runs an hour, see admission.DefaultMaxRunsPerHour). Admit locks the row
-- (SELECT ... FOR UPDATE) so one org's admissions are serialised across
-- every dispatcher replica.
CREATE TABLE org_quotas (
  org_id              text PRIMARY KEY REFERENCES orgs (org_id),
  max_concurrent_runs integer NOT NULL DEFAULT 100 CHECK (max_concurrent_runs >= 0),
  max_runs_per_hour   integer NOT NULL DEFAULT 1200 CHECK (max_runs_per_hour >= 0),
  updated_at          timestamptz NOT NULL DEFAULT now()
);

-- run_admissions: one row per admitted run. A run holds a slot while
-- ended_at IS NULL and its lease has not expired; the sidecar's heartbeat
-- moves lease_expires_at forward. Every time comes from the database clock.
CREATE TABLE run_admissions (
  org_id           text NOT NULL,
  run_id           text NOT NULL CHECK (run_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
  job_id           text NOT NULL,
  admitted_at      timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz NOT NULL,
  last_heartbeat_at timestamptz,
  ended_at         timestamptz,
  -- finished | terminated | lease_expired
  end_reason       text CHECK (end_reason IN ('finished', 'terminated', 'lease_expired')),
  exit_code        integer,
  PRIMARY KEY (org_id, run_id),
  FOREIGN KEY (org_id, job_id) REFERENCES jobs (org_id, job_id),
  CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX run_admissions_open ON run_admissions (org_id, lease_expires_at) WHERE ended_at IS NULL;
CREATE INDEX run_admissions_hour ON run_admissions (org_id, admitted_at);

-- termination_orders: at most one per run. The heartbeat answer carries it;
-- the sidecar acknowledges by finishing the run as terminated.
CREATE TABLE termination_orders (
  org_id       text NOT NULL,
  run_id       text NOT NULL,
  reason       text NOT NULL CHECK (reason <> ''),
  ordered_by   text NOT NULL,
  ordered_at   timestamptz NOT NULL DEFAULT now(),
  delivered_at timestamptz,
  PRIMARY KEY (org_id, run_id),
  FOREIGN KEY (org_id, run_id) REFERENCES run_admissions (org_id, run_id)
);

CREATE POLICY org_isolation ON org_quotas
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON run_admissions
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON termination_orders
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
ALTER TABLE org_quotas ENABLE ROW LEVEL SECURITY;
ALTER TABLE org_quotas FORCE ROW LEVEL SECURITY;
-- run_admissions is not FORCEd: the owner-run listing function below
-- reads across orgs (it returns only org and run IDs).
ALTER TABLE run_admissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE termination_orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE termination_orders FORCE ROW LEVEL SECURITY;

-- cordon_open_runs lists the runs holding a slot across every org, for the
-- anomaly sweep, which then works on each run inside its org's transaction.
CREATE FUNCTION cordon_open_runs(max_rows int)
RETURNS TABLE (org_id text, run_id text) LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
  SELECT a.org_id, a.run_id FROM run_admissions a
  WHERE a.ended_at IS NULL AND a.lease_expires_at > now()
  ORDER BY a.admitted_at LIMIT least(max_rows, 100000)
$$;
REVOKE ALL ON FUNCTION cordon_open_runs(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cordon_open_runs(int) TO cordon_service;

GRANT SELECT, INSERT, UPDATE ON org_quotas, run_admissions, termination_orders TO cordon_service;
