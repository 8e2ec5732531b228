-- Chain IDs: each hash chain (org, retention class, month) gets a number,
-- and its rows are kept unique and in order by (chain_id, seq), one
-- unique index per partition, instead of by the parent-wide index
-- audit_events_chain (org_id, retention_class, chain_month, seq).
--
-- Why: every ingested row pays for every index entry it makes. The old
-- entry was ~40 bytes of text, text, date and bigint, and its leaf pages
-- were half empty: the ten orgs of make bench-dispatcher each append at
-- their own point inside the index, so nearly every page split is a
-- 50/50 split (pgstatindex: 52% leaf density, 86 bytes of index per row).
-- An entry of two bigints is 24 bytes, narrow enough for Postgres's
-- split heuristic for "a grouping key, then an increasing number"
-- (nbtsplitloc.c, _bt_afternewitemoff: at most two int8 columns), which
-- leaves the left page full: 30 bytes of index per row (90% density).
-- Measured with make bench-dispatcher's closed loop, this binary against
-- the one before, alternating: Postgres CPU per row 19.7, 20.7, 19.2,
-- 20.5 us before; 19.4, 19.1, 18.8, 18.4 us after; WAL 788 -> 749 bytes
-- per row. (Without any chain index it was 15-16 us: the entry itself,
-- however small, costs a btree descent and a WAL record per row.)
-- A unique index on the partitioned parent must include the
-- partition keys (retention_class, chain_month), which would make the
-- entry too wide again, so the index is created on each leaf partition;
-- a chain lives entirely in one partition, so unique per partition is
-- unique.
--
-- Rows stored before this migration have no chain_id; they keep a
-- uniqueness index of their own (audit_events_chain, now partial), and
-- verify reads a chain's rows without chain_id first, then those with
-- it. chain_id is not part of the hash: verify checks that a chain's rows
-- carry its chain_id by finding them under it (a row moved to another
-- chain_id is a gap in its own chain, and fails its hash in the other).
--
-- Building the index of every existing partition blocks ingest while it
-- runs (as migration 0150 does); sidecars spool and redeliver meanwhile.
SET LOCAL ROLE cordon_owner;

ALTER TABLE audit_chain_heads ADD COLUMN chain_id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE audit_chain_heads ADD CONSTRAINT audit_chain_heads_chain_id UNIQUE (chain_id);
ALTER TABLE audit_events ADD COLUMN chain_id bigint;

DROP INDEX audit_events_chain;
CREATE UNIQUE INDEX audit_events_chain ON audit_events (org_id, retention_class, chain_month, seq)
  WHERE chain_id IS NULL;

DO $$
DECLARE
  leaf regclass;
BEGIN
  FOR leaf IN SELECT relid FROM pg_partition_tree('audit_events') WHERE isleaf LOOP
    EXECUTE format('CREATE UNIQUE INDEX %I ON %s (chain_id, seq)',
      (SELECT relname FROM pg_class WHERE oid = leaf) || '_chain_seq', leaf);
  END LOOP;
END $$;

-- As in migration 0002, plus the (chain_id, seq) index of each partition
-- it creates.
CREATE OR REPLACE FUNCTION cordon_ensure_audit_partitions(around date, months_back int, months_ahead int)
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
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (chain_id, seq)', name || '_chain_seq', name);
        EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION cordon_refuse_audit_change()', name);
        created := created + 1;
      EXCEPTION WHEN check_violation THEN
        RAISE WARNING 'partition % not created: rows for that month are in the default partition', name;
      END;
    END LOOP;
  END LOOP;
  RETURN created;
END $$;
