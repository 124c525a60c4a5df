-- Which regions can we send to right now?
SELECT region_id, display_name, hosting_region, present_since
FROM active_regions
WHERE carrier_enabled
ORDER BY display_name, region_id;
