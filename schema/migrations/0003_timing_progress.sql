-- 0003_timing_progress: how far each device's live timing is written, durably.
--
-- Several instances share the stream's consumer group, so each sees only part of a
-- device's fixes; a shutdown or crash drops fixes still queued for timing; a race
-- definition change leaves fixes already stored untimed. A row here says: every timing
-- effect (timing_records, zone_events, stage_results) of the device's fixes up to and
-- including last_ts is written. The race domain updates it in the same transaction as
-- those rows, under a per-device advisory lock, so it can tell whether its in-memory
-- state is still the latest (updated_at, taken from clock_timestamp(), changes with every
-- write) and which devices have stored fixes nobody timed (newer than last_ts).
--
-- The queries that compare with positions ("fixes of a device after last_ts", in time
-- order) are served by positions' unique (device_id, ts) index; no new index is needed.

CREATE TABLE IF NOT EXISTS timing_progress (
    device_id  text        PRIMARY KEY,
    last_ts    timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
