-- Which regions could each account send to at a given moment (:as_of), and from when to when? (PostgreSQL)
SELECT account, region_id, display_name, hosting_region, valid_from, valid_to
FROM region_status_intervals
WHERE carrier_enabled
  AND valid_from <= CAST(:as_of AS timestamptz)
  AND (valid_to IS NULL OR valid_to > CAST(:as_of AS timestamptz))
ORDER BY account, display_name, region_id;
