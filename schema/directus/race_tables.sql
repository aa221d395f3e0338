-- Race tables owned by Directus in production (../shared/spec/race-domain.md).
--
-- FOR DEVELOPMENT AND TESTS ONLY: in production Directus creates and migrates these
-- tables; the processor never runs this file there. It mirrors what the Directus schema
-- snapshot describes, column for column, so the processor can be developed and tested
-- without a Directus instance. Idempotent (IF NOT EXISTS everywhere).
--
-- Read by the processor: events, devices, entries, stages, geofences, io_mappings.
-- Written by the processor: timing_records, zone_events, stage_results (idempotent on
-- their natural keys, hence the unique constraints).

CREATE TABLE IF NOT EXISTS events (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    starts_at   timestamptz,
    ends_at     timestamptz,
    status      text NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'live', 'finished'))
);

CREATE TABLE IF NOT EXISTS devices (
    id     serial PRIMARY KEY,
    imei   text NOT NULL UNIQUE,   -- = device_id in the telemetry stream
    model  text,                   -- e.g. FMB920, FMC130: selects io_mappings
    label  text
);

CREATE TABLE IF NOT EXISTS entries (
    id         serial PRIMARY KEY,
    event_id   integer NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    device_id  integer NOT NULL REFERENCES devices (id),
    number     text,                -- race number
    crew       text,
    class      text
);
CREATE INDEX IF NOT EXISTS entries_event_idx ON entries (event_id);
CREATE INDEX IF NOT EXISTS entries_device_idx ON entries (device_id);

CREATE TABLE IF NOT EXISTS stages (
    id         serial PRIMARY KEY,
    event_id   integer NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    name       text NOT NULL,
    sequence   integer NOT NULL DEFAULT 1,
    opens_at   timestamptz,
    closes_at  timestamptz
);

CREATE TABLE IF NOT EXISTS geofences (
    id               serial PRIMARY KEY,
    event_id         integer NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    stage_id         integer REFERENCES stages (id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('start', 'checkpoint', 'finish', 'zone')),
    name             text,
    sequence         integer NOT NULL DEFAULT 0,
    geometry         jsonb NOT NULL,      -- GeoJSON: LineString (lines) or Polygon (zones)
    speed_limit_kmh  double precision     -- zones only
);

CREATE TABLE IF NOT EXISTS io_mappings (
    id      serial PRIMARY KEY,
    model   text NOT NULL,
    io_id   integer NOT NULL,
    name    text NOT NULL,                -- e.g. ignition, odometer_km, external_voltage_v
    scale   double precision NOT NULL DEFAULT 1,
    kind    text NOT NULL DEFAULT 'number' CHECK (kind IN ('bool', 'number', 'bytes')),
    UNIQUE (model, io_id)
);

CREATE TABLE IF NOT EXISTS timing_records (
    id           bigserial PRIMARY KEY,
    event_id     integer NOT NULL,
    stage_id     integer NOT NULL,
    entry_id     integer NOT NULL,
    device_id    text NOT NULL,
    geofence_id  integer NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('start', 'checkpoint', 'finish')),
    crossed_at   timestamptz NOT NULL,
    source_ts    timestamptz NOT NULL,    -- the fix after the crossing
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (entry_id, geofence_id)        -- the first crossing counts
);

CREATE TABLE IF NOT EXISTS zone_events (
    id             bigserial PRIMARY KEY,
    event_id       integer NOT NULL,
    entry_id       integer NOT NULL,
    geofence_id    integer NOT NULL,
    entered_at     timestamptz NOT NULL,
    exited_at      timestamptz,
    max_speed_kmh  double precision,
    UNIQUE (entry_id, geofence_id, entered_at)
);

CREATE TABLE IF NOT EXISTS stage_results (
    id                  bigserial PRIMARY KEY,
    event_id            integer NOT NULL,
    stage_id            integer NOT NULL,
    entry_id            integer NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz,
    elapsed_ms          bigint,
    checkpoints_passed  integer NOT NULL DEFAULT 0,
    checkpoints_total   integer NOT NULL DEFAULT 0,
    status              text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished')),
    rank                integer,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stage_id, entry_id)
);
