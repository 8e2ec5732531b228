-- Cost alerts (issue 6): per-org monthly budgets and thresholds, each
-- org's alert webhook, the alerts raised, and the outbox that writes their
-- audit events and delivers their webhooks at least once. Owned by
-- dispatcher/alerts.
SET LOCAL ROLE cordon_owner;

CREATE TABLE org_budgets (
  org_id             text PRIMARY KEY REFERENCES orgs (org_id),
  monthly_budget_usd numeric(14, 4) NOT NULL CHECK (monthly_budget_usd > 0),
  thresholds_pct     integer[] NOT NULL DEFAULT '{50,80,100}'
    CHECK (cardinality(thresholds_pct) BETWEEN 1 AND 16 AND 0 < ALL (thresholds_pct) AND 1000 >= ALL (thresholds_pct)),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

-- org_webhooks: where an org's alerts go. The URL must also be listed
-- under webhooks: in the org's allowlist file, checked at every delivery.
-- secret signs the body (HMAC-SHA256); it never leaves the dispatcher.
CREATE TABLE org_webhooks (
  org_id     text PRIMARY KEY REFERENCES orgs (org_id),
  url        text NOT NULL CHECK (url LIKE 'https://%' AND length(url) <= 2048),
  secret     bytea NOT NULL CHECK (length(secret) >= 32),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- cost_alerts: the primary key is the exactly-once rule: one alert per
-- org, month and threshold, whichever replica evaluates first.
CREATE TABLE cost_alerts (
  org_id        text NOT NULL,
  month         date NOT NULL,
  threshold_pct integer NOT NULL,
  spend_usd     numeric(14, 4) NOT NULL,
  budget_usd    numeric(14, 4) NOT NULL,
  event_id      text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, month, threshold_pct)
);

-- alert_outbox: written in the transaction that raises the alert, so a
-- crash after commit loses nothing: a deliverer claims due rows (moving
-- next_attempt_at ahead as a lease), appends the audit event (its event ID
-- is fixed, so a second append is a no-op) and posts the webhook.
CREATE TABLE alert_outbox (
  org_id          text NOT NULL,
  event_id        text NOT NULL,
  event_type      text NOT NULL,
  payload         jsonb NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  audit_done      boolean NOT NULL DEFAULT false,
  webhook_state   text NOT NULL DEFAULT 'pending'
    CHECK (webhook_state IN ('pending', 'delivered', 'no_webhook', 'not_allowed', 'failed')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_status     integer,
  last_error      text,
  delivered_at    timestamptz,
  PRIMARY KEY (org_id, event_id)
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at) WHERE webhook_state = 'pending' OR NOT audit_done;

CREATE POLICY org_isolation ON org_budgets
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON org_webhooks
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON cost_alerts
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
CREATE POLICY org_isolation ON alert_outbox
  USING (org_id = current_setting('cordon.org_id', true))
  WITH CHECK (org_id = current_setting('cordon.org_id', true));
-- org_budgets and alert_outbox are not FORCEd: the owner-run listing
-- functions below read across orgs, returning only IDs.
ALTER TABLE org_budgets ENABLE ROW LEVEL SECURITY;
ALTER TABLE org_webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE org_webhooks FORCE ROW LEVEL SECURITY;
ALTER TABLE cost_alerts ENABLE ROW LEVEL SECURITY;
ALTER TABLE cost_alerts FORCE ROW LEVEL SECURITY;
ALTER TABLE alert_outbox ENABLE ROW LEVEL SECURITY;

CREATE FUNCTION cordon_budgeted_orgs()
RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
  SELECT org_id FROM org_budgets ORDER BY org_id
$$;
CREATE FUNCTION cordon_due_alerts(max_rows int)
RETURNS TABLE (org_id text, event_id text) LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
  SELECT o.org_id, o.event_id FROM alert_outbox o
  WHERE (o.webhook_state = 'pending' OR NOT o.audit_done) AND o.next_attempt_at <= now()
  ORDER BY o.next_attempt_at LIMIT least(max_rows, 10000)
$$;
REVOKE ALL ON FUNCTION cordon_budgeted_orgs() FROM PUBLIC;
REVOKE ALL ON FUNCTION cordon_due_alerts(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cordon_budgeted_orgs(), cordon_due_alerts(int) TO cordon_service;

GRANT SELECT, INSERT, UPDATE ON org_budgets, org_webhooks, alert_outbox TO cordon_service;
GRANT SELECT, INSERT ON cost_alerts TO cordon_service;
