-- The ingest writer commits the requests of several orgs in one
-- transaction. It used to set cordon.org_id and run its statements once per
-- org; each of those statements paid Postgres's per-statement cost again
-- (executor start-up, partition routing, the constraint and policy
-- expressions of every partition it touched): about 0.6 ms of Postgres CPU
-- per org per transaction, more than the rows themselves when an org sends
-- a few events at a time. It now stores every org's audit rows with one
-- INSERT, locks and moves every chain head with one statement each, and
-- names the orgs of the transaction in cordon.write_orgs (comma-separated
-- org IDs, which are slugs and hold no comma).
--
-- These policies let cordon_service, and only it, insert audit rows and
-- lock, read and move chain heads of exactly those orgs. They add nothing
-- to what it can read of audit rows (there is no SELECT policy here), and
-- an unset or empty cordon.write_orgs matches no org. The list is read
-- once per statement (the scalar subquery is an InitPlan), not per row.
SET LOCAL ROLE cordon_owner;

CREATE POLICY ingest_write ON audit_events FOR INSERT TO cordon_service
  WITH CHECK (org_id = ANY ((SELECT string_to_array(current_setting('cordon.write_orgs', true), ','))::text[]));
CREATE POLICY ingest_write ON audit_chain_heads TO cordon_service
  USING (org_id = ANY ((SELECT string_to_array(current_setting('cordon.write_orgs', true), ','))::text[]))
  WITH CHECK (org_id = ANY ((SELECT string_to_array(current_setting('cordon.write_orgs', true), ','))::text[]));
CREATE POLICY ingest_write ON orgs FOR INSERT TO cordon_service
  WITH CHECK (org_id = ANY ((SELECT string_to_array(current_setting('cordon.write_orgs', true), ','))::text[]));
