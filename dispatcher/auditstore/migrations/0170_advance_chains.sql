-- cordon_advance_chains: lock chain heads and move them forward in one
-- statement, and only from where the caller expects them to be.
--
-- The ingest writer used to spend three round trips on a transaction:
-- one to lock the heads and read where they are, one to insert the rows
-- it then hashed onto them and move the heads, one to COMMIT after it had
-- checked the row counts of the second. A dispatcher replica now
-- remembers where it left each chain and sends BEGIN, this call, the
-- INSERT and COMMIT in one pipeline: the call locks the heads and checks
-- them against what the writer hashed onto, so a stale guess (another
-- replica appended in between) aborts the transaction before the rows
-- are inserted, and the writer redoes it the long way. The check that
-- used to run in Go between the write and the COMMIT runs here, before
-- the COMMIT that follows it in the pipeline.
--
-- ids, old_seqs and old_hashes say where each chain's head is expected
-- (ids in the global lock order, org then class then month, the order
-- every writer locks in, so two transactions never deadlock);
-- new_seqs and new_hashes where it moves. It raises SQLSTATE CD001 if a
-- head is not where expected (or not visible to the caller under
-- row-level security: cordon.write_orgs must name its org), and CD002 if
-- the arrays disagree in length. It runs with the caller's rights.
SET LOCAL ROLE cordon_owner;

CREATE FUNCTION cordon_advance_chains(ids bigint[], old_seqs bigint[], old_hashes bytea[],
                                      new_seqs bigint[], new_hashes bytea[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  n int := cardinality(ids);
  found int;
BEGIN
  IF cardinality(old_seqs) <> n OR cardinality(old_hashes) <> n
     OR cardinality(new_seqs) <> n OR cardinality(new_hashes) <> n THEN
    RAISE EXCEPTION 'cordon_advance_chains: % chain ids but % old seqs, % old hashes, % new seqs, % new hashes',
      n, cardinality(old_seqs), cardinality(old_hashes), cardinality(new_seqs), cardinality(new_hashes)
      USING ERRCODE = 'CD002';
  END IF;
  -- Rows are locked as the sort returns them, in the arrays' order. A
  -- head another transaction moves while this one waits for its lock is
  -- checked again in its new version (READ COMMITTED), and no longer
  -- matches.
  SELECT count(*) INTO found FROM (
    SELECT 1 FROM public.audit_chain_heads h
    JOIN unnest(ids, old_seqs, old_hashes) WITH ORDINALITY AS u(id, seq, hash, ord) ON h.chain_id = u.id
    WHERE h.last_seq = u.seq AND h.last_hash = u.hash
    ORDER BY u.ord
    FOR UPDATE OF h) AS locked;
  IF found <> n THEN
    RAISE EXCEPTION 'cordon_advance_chains: % of % chain heads are where the writer expected them', found, n
      USING ERRCODE = 'CD001', HINT = 'another writer appended to the chain; read the heads again';
  END IF;
  UPDATE public.audit_chain_heads h SET last_seq = u.seq, last_hash = u.hash, updated_at = now()
    FROM unnest(ids, new_seqs, new_hashes) AS u(id, seq, hash)
    WHERE h.chain_id = u.id;
  GET DIAGNOSTICS found = ROW_COUNT;
  IF found <> n THEN
    RAISE EXCEPTION 'cordon_advance_chains: moved % of % chain heads', found, n USING ERRCODE = 'CD001';
  END IF;
END $$;

REVOKE ALL ON FUNCTION cordon_advance_chains(bigint[], bigint[], bytea[], bigint[], bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cordon_advance_chains(bigint[], bigint[], bytea[], bigint[], bytea[]) TO cordon_service;
