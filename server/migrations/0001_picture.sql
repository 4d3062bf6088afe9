-- beeld's picture in PostGIS. Documented for analysts in docs/postgis.md.
-- All geometries are WGS84 lon/lat (EPSG:4326), as on the wire.
CREATE EXTENSION IF NOT EXISTS postgis;

-- The current picture: one row per live feature (reference boundaries excluded).
CREATE TABLE beeld_features (
    collection  text        NOT NULL,  -- incidents | units | hazards
    id          text        NOT NULL,  -- the feature id, unique per collection
    geom        geometry(Geometry, 4326) NOT NULL,
    properties  jsonb       NOT NULL,  -- the feed's properties, typed ones normalised
    feed        text        NOT NULL,  -- who wrote the current version
    observed_at timestamptz NOT NULL,  -- when the feed observed it
    received_at timestamptz NOT NULL,  -- when beeld accepted it (= last change)
    expires_at  timestamptz,           -- when beeld removes it by itself, if ever
    seq         bigint      NOT NULL,  -- global change number of its last change
    record      bytea       NOT NULL,  -- beeld's exact binary copy, for reloading
    PRIMARY KEY (collection, id)
);
CREATE INDEX beeld_features_geom ON beeld_features USING gist (geom);

-- Every change, in seq order: the history for after-action review.
CREATE TABLE beeld_changes (
    seq        bigint      PRIMARY KEY,
    at         timestamptz NOT NULL,   -- when beeld applied it
    collection text        NOT NULL,
    id         text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('upsert', 'delete')),
    cause      text        NOT NULL,   -- the feed's name, or 'expired'
    geom       geometry(Geometry, 4326),  -- the new geometry (upserts)
    properties jsonb                      -- the new properties (upserts)
);
CREATE INDEX beeld_changes_at ON beeld_changes (at);
CREATE INDEX beeld_changes_feature ON beeld_changes (collection, id, seq);
CREATE INDEX beeld_changes_geom ON beeld_changes USING gist (geom);

-- How far PostGIS has caught up with beeld's journal.
CREATE TABLE beeld_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL
);
INSERT INTO beeld_state (seq) VALUES (0);
