-- When did a region lose carrier support (disabled, or removed while enabled)?
SELECT changed_at, change, carrier_enabled_after, sync_run_id
FROM region_history
WHERE region_id = :region_id
  AND carrier_enabled_before IS TRUE
  AND carrier_enabled_after IS NOT TRUE
ORDER BY changed_at DESC, id DESC;
