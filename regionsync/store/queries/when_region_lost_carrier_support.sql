-- When did a region lose carrier support (disabled, or removed while enabled), per account?
SELECT account, changed_at, change, carrier_enabled_after, sync_run_id
FROM region_history
WHERE region_id = :region_id
  AND carrier_enabled_before IS TRUE
  AND carrier_enabled_after IS NOT TRUE
ORDER BY account, changed_at DESC, id DESC;
