-- Roles are cluster-wide, so they are created only if missing, and a race
-- with another database migrating at the same time is tolerated.
--   cordon_owner   owns every object; FORCE ROW LEVEL SECURITY confines it too.
--   cordon_service the dispatcher (SET ROLE after login): reads and appends,
--                  never UPDATE/DELETE/TRUNCATE of audit rows.
--   cordon_auditor verify: reads every org's rows, writes nothing.
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['cordon_owner', 'cordon_service', 'cordon_auditor'] LOOP
    BEGIN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END LOOP;
END $$;

DO $$
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE format('GRANT cordon_owner, cordon_service, cordon_auditor TO %I', current_user);
  END IF;
END $$;

GRANT USAGE, CREATE ON SCHEMA public TO cordon_owner;
GRANT USAGE ON SCHEMA public TO cordon_service, cordon_auditor;
