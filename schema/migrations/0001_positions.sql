-- 0001_positions: one row per GPS fix.
--
-- UNIQUE (device_id, ts) is the row's identity. Redis Streams deliver at least once, so
-- the writer inserts with ON CONFLICT (device_id, ts) DO NOTHING and a re-delivered entry
-- becomes a no-op instead of a duplicate. The same index serves "newest row for a device"
-- (WHERE device_id = $1 ORDER BY ts DESC LIMIT 1) as a backward index scan.
--
-- Storage: where the TimescaleDB extension is available, positions becomes a hypertable
-- with one-day chunks (rally data is queried by day and dropped by age); elsewhere it stays
-- a plain table with identical columns and semantics, so the code never has to care. The
-- unique key includes ts, the partitioning column, as hypertables require. The runner
-- reports which mode it found ("hypertable" or "plain") at startup.
--
-- Note: CREATE EXTENSION timescaledb fails unless the server preloads it
-- (shared_preload_libraries). That failure is deliberate: an installed but unloaded
-- TimescaleDB is a misconfiguration to fix, not a reason to silently fall back.

CREATE TABLE positions (
    device_id   text             NOT NULL,
    ts          timestamptz      NOT NULL,
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL,
    altitude    double precision,
    heading     double precision,
    speed       double precision,
    satellites  smallint,
    priority    smallint,
    event_io_id integer,
    fix_valid   boolean          NOT NULL,
    attributes  jsonb            NOT NULL DEFAULT '{}',
    received_at timestamptz      NULL,
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT positions_device_id_ts_key UNIQUE (device_id, ts)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        -- EXECUTE: the function only exists once the extension does.
        EXECUTE $sql$
            SELECT create_hypertable(
                'positions', 'ts',
                if_not_exists => true,
                chunk_time_interval => interval '1 day'
            )
        $sql$;
    END IF;
END
$$;
