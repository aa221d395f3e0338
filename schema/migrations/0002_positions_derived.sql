-- Named attributes derived from the raw IO bag (ignition, odometer_km, ...), computed by
-- the race domain's IO mapping at write time and stored beside the raw bag, so the live
-- broadcast, the replay tool and SQL users read the same values. NULL when no mapping
-- applied (or for rows written before this migration; `processor backfill-derived`
-- fills those in).
ALTER TABLE positions ADD COLUMN IF NOT EXISTS derived jsonb;
