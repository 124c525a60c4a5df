-- Which regions can each account send to right now?
SELECT account, region_id, display_name, hosting_region, present_since
FROM active_regions
WHERE carrier_enabled
ORDER BY account, display_name, region_id;
