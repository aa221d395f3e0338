-- 0004_timing_progress_definition: what a device's timing rows were computed from.
--
-- A pass may rebuild a device's timing state from its stored rows (timing_records,
-- zone_events, stage_results and the fix at last_ts) instead of re-reading every stored
-- fix, but only if those rows were computed under the definition it holds now:
-- ``definition`` is the fingerprint of the Directus rows (``RawRows.fingerprint``) of the
-- pass that wrote them. ``timed`` is how many valid stored fixes of the device's window,
-- up to and including last_ts, they reflect: when it equals the count stored now, a fix
-- at or before last_ts that a pass gets was already timed (another instance's pass read
-- it), so it is no late fix. NULL (rows written before this migration, by the replay
-- tool's narrowed passes, or by a recomputation that found no fix) means unknown: the
-- next pass replays every stored fix.

ALTER TABLE timing_progress
    ADD COLUMN IF NOT EXISTS definition text,
    ADD COLUMN IF NOT EXISTS timed bigint;
