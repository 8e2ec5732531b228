-- audit_events_org_ts serves the user API's listing of one org's audit
-- events newest first. It was keyed (org_id, ts, event_id, retention_class),
-- the whole keyset cursor, so that a page needed no sort at all. But every
-- ingested row pays for every index entry it makes, and that entry was as
-- wide as the event ID: about 135 bytes of index per row. Measured with
-- make bench-dispatcher's closed loop, alternating: Postgres CPU per row
-- 20.0, 20.0, 19.8 us with it, 18.0, 17.9, 19.0 us with the key below;
-- WAL 848 -> 747 bytes per row.
--
-- Keyed (org_id, ts) alone, an entry is about 48 bytes. A page still reads
-- the index newest first: Postgres sorts only the rows that share a
-- timestamp (an incremental sort on event_id and retention_class), which
-- for timestamps in microseconds is almost never more than one (EXPLAIN
-- ANALYZE of a 100-row page: an index scan per partition, a merge append
-- and an incremental sort, 0.3 ms). The user API pays for it: a page
-- query measured 1.7-2.7 ms instead of 1.3 ms (BenchmarkQueries in
-- dispatcher/userapi, alternating runs), mostly planning the sort. That
-- is a person waiting on a page; ingest is every sidecar, all the time.
--
-- On a large audit_events this rebuilds the index of every partition while
-- holding a lock that blocks ingest; Postgres cannot build an index on a
-- partitioned table concurrently. Run it at a quiet hour: sidecars spool
-- and redeliver while ingest answers 503.
SET LOCAL ROLE cordon_owner;
DROP INDEX audit_events_org_ts;
CREATE INDEX audit_events_org_ts ON audit_events (org_id, ts DESC);
