-- What changed in the last 30 days, per account? (PostgreSQL)
SELECT account, changed_at, region_id, display_name, change,
       carrier_enabled_before, carrier_enabled_after,
       hosting_region_before, hosting_region_after, sync_run_id
FROM region_changes
WHERE changed_at >= now() - interval '30 days'
ORDER BY account, changed_at DESC, history_id DESC;
