-- Indexes for the user API (dispatcher/userapi): audit events of one org
-- newest first (its keyset pagination on ts, event_id, retention_class),
-- denials of one org over time, and usage reports and runs by time.
SET LOCAL ROLE cordon_owner;
CREATE INDEX audit_events_org_ts ON audit_events (org_id, ts DESC, event_id DESC, retention_class DESC);
CREATE INDEX audit_events_org_denials ON audit_events (org_id, ts) WHERE event_type = 'EGRESS_DENIED';
CREATE INDEX usage_reports_org_ended ON usage_reports (org_id, ended_at);
CREATE INDEX runs_org_started ON runs (org_id, started_at DESC, run_id DESC);
