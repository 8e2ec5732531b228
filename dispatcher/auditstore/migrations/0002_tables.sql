-- Everything from here on is owned by cordon_owner.
SET LOCAL ROLE cordon_owner;

-- The org (tenant) a row belongs to is the slug from the SPIFFE ID
-- spiffe://TD/org/ORG/job/JOB and the allowlist file.
CREATE TABLE orgs (
  org_id     text PRIMARY KEY CHECK (org_id ~ '^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$'),
  name       text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Users come from the OIDC IdP (claims sub, email, custom:org_id,
-- custom:role); the first login inserts the row (issue 6).
CREATE TABLE users (
  user_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id        text NOT NULL REFERENCES orgs (org_id),
  external_id   text NOT NULL CHECK (external_id <> ''),
  email         text NOT NULL,
  role          text NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  last_login_at timestamptz,
  UNIQUE (org_id, external_id)
);

CREATE TABLE jobs (
  org_id     text NOT NULL REFERENCES orgs (org_id),
  job_id     text NOT NULL CHECK (job_id ~ '^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$'),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, job_id)
);

-- runs holds each run's latest known state, from its usage reports.
CREATE TABLE runs (
  org_id         text NOT NULL,
  job_id         text NOT NULL,
  run_id         text NOT NULL,
  started_at     timestamptz NOT NULL,
  last_report_at timestamptz NOT NULL,
  final          boolean NOT NULL DEFAULT false,
  exit_code      integer,
  PRIMARY KEY (org_id, run_id),
  FOREIGN KEY (org_id, job_id) REFERENCES jobs (org_id, job_id)
);

CREATE TABLE usage_reports (
  org_id             text NOT NULL,
  report_id          text NOT NULL,
  job_id             text NOT NULL,
  run_id             text NOT NULL,
  final              boolean NOT NULL,
  started_at         timestamptz NOT NULL,
  ended_at           timestamptz NOT NULL,
  exit_code          integer,
  cpu_user_seconds   double precision NOT NULL,
  cpu_system_seconds double precision NOT NULL,
  max_rss_bytes      bigint NOT NULL,
  wall_seconds       double precision NOT NULL,
  egress             jsonb,
  denials            bigint NOT NULL,
  redactions         bigint NOT NULL,
  stdout_bytes       bigint NOT NULL,
  stderr_bytes       bigint NOT NULL,
  enforcement        text NOT NULL,
  received_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, report_id),
  FOREIGN KEY (org_id, job_id) REFERENCES jobs (org_id, job_id)
);
CREATE INDEX usage_reports_run ON usage_reports (org_id, run_id, ended_at);

-- audit_events: the seeds/002 audit log format, append-only and hash-chained.
--
-- Partitioned by retention class, then by the month of the event's own
-- timestamp, so that retention is a whole-partition DROP (1 year for
-- 'standard', 2 years for 'security': authentication and authorization).
-- Each (org, class, month) is its own hash chain that lives entirely inside
-- one partition: dropping a partition drops whole chains and leaves every
-- remaining chain complete and verifiable from its genesis.
CREATE TABLE audit_events (
  org_id           text NOT NULL,          -- resource.tenant_id
  retention_class  text NOT NULL CHECK (retention_class IN ('standard', 'security')),
  chain_month      date NOT NULL,
  seq              bigint NOT NULL CHECK (seq > 0),
  ts               timestamptz NOT NULL,   -- event timestamp
  event_type       text NOT NULL,
  event_id         text NOT NULL,
  actor_type       text NOT NULL,
  actor_id         text NOT NULL,
  actor_ip         text NOT NULL DEFAULT '',
  actor_user_agent text NOT NULL DEFAULT '',
  resource_type    text NOT NULL,
  resource_id      text NOT NULL,
  action           text NOT NULL,
  result           text NOT NULL,
  -- json, not jsonb: the exact bytes that were hashed, so verify can
  -- recompute the hash.
  metadata         json,
  request_id       text NOT NULL DEFAULT '',
  received_at      timestamptz NOT NULL DEFAULT now(),
  prev_hash        bytea NOT NULL CHECK (length(prev_hash) = 32),
  hash             bytea NOT NULL CHECK (length(hash) = 32),
  CHECK (chain_month = date_trunc('month', ts AT TIME ZONE 'UTC')::date)
) PARTITION BY LIST (retention_class);

CREATE TABLE audit_events_standard PARTITION OF audit_events
  FOR VALUES IN ('standard') PARTITION BY RANGE (chain_month);
CREATE TABLE audit_events_security PARTITION OF audit_events
  FOR VALUES IN ('security') PARTITION BY RANGE (chain_month);
-- A month without a partition still accepts inserts.
CREATE TABLE audit_events_standard_default PARTITION OF audit_events_standard DEFAULT;
CREATE TABLE audit_events_security_default PARTITION OF audit_events_security DEFAULT;

-- An event is stored once per chain; (retention_class, chain_month) are the
-- partition keys every unique index must include.
CREATE UNIQUE INDEX audit_events_event_id ON audit_events (org_id, event_id, retention_class, chain_month);
CREATE UNIQUE INDEX audit_events_chain ON audit_events (org_id, retention_class, chain_month, seq);

-- The head of each chain. Writers lock it (INSERT ... ON CONFLICT DO UPDATE)
-- to append, which serialises appends to one chain across dispatcher
-- replicas; verify also checks the last row against it, so deleting the
-- newest rows is detected.
CREATE TABLE audit_chain_heads (
  org_id          text NOT NULL,
  retention_class text NOT NULL,
  chain_month     date NOT NULL,
  last_seq        bigint NOT NULL CHECK (last_seq >= 0),
  last_hash       bytea NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, retention_class, chain_month)
);

-- Partitions dropped by retention, so verify tells an expired chain from a
-- deleted one.
CREATE TABLE audit_partition_drops (
  retention_class text NOT NULL,
  chain_month     date NOT NULL,
  dropped_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (retention_class, chain_month)
);

-- Append-only, for everyone including the owner (a superuser can only get
-- around it by disabling triggers, and verify then finds what changed).
CREATE FUNCTION cordon_refuse_audit_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% on % refused: audit rows are append-only', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION cordon_refuse_audit_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit_events_standard
  FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit_events_security
  FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit_events_standard_default
  FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit_events_security_default
  FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change();

CREATE FUNCTION cordon_chain_head_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' OR NEW.last_seq < OLD.last_seq THEN
    RAISE EXCEPTION 'chain head of % % % cannot move backwards', OLD.org_id, OLD.retention_class, OLD.chain_month
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER forward_only BEFORE UPDATE OR DELETE ON audit_chain_heads
  FOR EACH ROW EXECUTE FUNCTION cordon_chain_head_forward();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit_chain_heads
  FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change();

-- cordon_ensure_audit_partitions creates the monthly partitions of both
-- classes from months_back before to months_ahead after the month of
-- around (each at most 24). It runs as the owner so the dispatcher can keep
-- partitions ahead without owning tables; a month already dropped by
-- retention is never recreated, and a month whose rows already sit in the
-- default partition is skipped with a warning.
CREATE FUNCTION cordon_ensure_audit_partitions(around date, months_back int, months_ahead int)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  cls text;
  m date;
  name text;
  created int := 0;
BEGIN
  IF months_back NOT BETWEEN 0 AND 24 OR months_ahead NOT BETWEEN 0 AND 24 THEN
    RAISE EXCEPTION 'months_back and months_ahead must be between 0 and 24, got % and %', months_back, months_ahead;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('cordon_ensure_audit_partitions'));
  FOREACH cls IN ARRAY ARRAY['standard', 'security'] LOOP
    FOR i IN -months_back..months_ahead LOOP
      m := (date_trunc('month', around) + make_interval(months => i))::date;
      name := format('audit_events_%s_%s', cls, to_char(m, 'YYYY_MM'));
      CONTINUE WHEN to_regclass(name) IS NOT NULL;
      CONTINUE WHEN EXISTS (SELECT 1 FROM audit_partition_drops d WHERE d.retention_class = cls AND d.chain_month = m);
      BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
          name, 'audit_events_' || cls, m, (m + interval '1 month')::date);
        EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change()', name);
        created := created + 1;
      EXCEPTION WHEN check_violation THEN
        RAISE WARNING 'partition % not created: rows for that month are in the default partition', name;
      END;
    END LOOP;
  END LOOP;
  RETURN created;
END $$;
REVOKE ALL ON FUNCTION cordon_ensure_audit_partitions(date, int, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cordon_ensure_audit_partitions(date, int, int) TO cordon_service;

SELECT cordon_ensure_audit_partitions(current_date, 3, 3);

-- Row-level security on every org-scoped table: a transaction sees and
-- writes only the org it set with set_config('cordon.org_id', ORG, true).
-- FORCE makes the policies apply to the owner as well.
CREATE POLICY org_isolation ON orgs
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON users
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON jobs
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON runs
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON usage_reports
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON audit_events
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON audit_chain_heads
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
-- verify reads every org's chain, read-only.
CREATE POLICY auditor_read ON audit_events FOR SELECT TO cordon_auditor USING (true);
CREATE POLICY auditor_read ON audit_chain_heads FOR SELECT TO cordon_auditor USING (true);

ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE runs FORCE ROW LEVEL SECURITY;
ALTER TABLE usage_reports ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_reports FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;

-- The service role appends; it has no UPDATE, DELETE or TRUNCATE on audit
-- rows and no access to the partitions themselves (which would bypass the
-- parent's policies).
GRANT SELECT, INSERT, UPDATE ON orgs, users, jobs, runs TO cordon_service;
GRANT SELECT, INSERT ON usage_reports, audit_events TO cordon_service;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO cordon_service;
GRANT SELECT ON audit_events, audit_chain_heads, audit_partition_drops TO cordon_auditor;
