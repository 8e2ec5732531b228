-- Anomaly detection scores each finished run once (dispatcher/anomaly,
-- Detector.SweepFinished): ended runs not yet scored are listed across
-- orgs by the owner-run function below (IDs only), for up to a day after
-- they ended, waiting for their final usage report.
SET LOCAL ROLE cordon_owner;

ALTER TABLE run_admissions ADD COLUMN anomaly_scored_at timestamptz;
CREATE INDEX run_admissions_unscored ON run_admissions (ended_at)
  WHERE ended_at IS NOT NULL AND anomaly_scored_at IS NULL;

CREATE FUNCTION cordon_unscored_runs(max_rows int)
RETURNS TABLE (org_id text, run_id text) LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
  SELECT a.org_id, a.run_id FROM run_admissions a
  WHERE a.ended_at IS NOT NULL AND a.anomaly_scored_at IS NULL AND a.ended_at > now() - interval '1 day'
  ORDER BY a.ended_at LIMIT least(max_rows, 100000)
$$;
REVOKE ALL ON FUNCTION cordon_unscored_runs(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cordon_unscored_runs(int) TO cordon_service;
