-- How fresh is each account's data, and is its syncing failing?
SELECT account, last_success_at, last_success_age_seconds, consecutive_failures,
       last_run_status, last_run_error, active_regions, removed_regions
FROM sync_health
ORDER BY account;
