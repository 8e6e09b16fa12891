-- The seed's monitoring queries (PostgreSQL), as an operator runs them in psql:
--   psql "$DATABASE_URL" -f tui_backfill/seams/queue/monitoring.sql
-- They read only the seed's own columns, so they run unchanged against the worker's schema.

-- Queue depth: jobs waiting (claimable now or waiting for their backoff).
SELECT COUNT(*) AS pending_jobs
FROM publish_jobs
WHERE status = 'pending';

-- Failed jobs needing attention: retries exhausted (or a permanent failure).
SELECT id, file_id, retry_count, last_error
FROM publish_jobs
WHERE status = 'failed' AND retry_count >= max_retries
ORDER BY id;

-- Average processing time of completed jobs, in seconds.
SELECT AVG(EXTRACT(EPOCH FROM (completed_at - started_at))) AS avg_processing_seconds
FROM publish_jobs
WHERE status = 'completed';

-- Publish status summary of the media.
SELECT publish_status, COUNT(*) AS files
FROM auction_files
GROUP BY publish_status
ORDER BY publish_status;
