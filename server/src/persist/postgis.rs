//! PostGIS: schema migrations, loading the picture at start, and the
//! write-behind copier that keeps the tables up to date from the journal.
//!
//! # Why the journal feeds PostGIS
//!
//! Ingest never waits for PostGIS. The copier task reads *durable* journal
//! records ([`super::journal::Cursor`]) after the seq stored in
//! `beeld_state`, and writes them in one transaction per batch: current
//! features (UNNEST upsert/delete, debounced so that only the last state of
//! a feature within a batch is written), every change into `beeld_changes`,
//! and the new seq. So PostGIS can be slow or down without losing anything
//! acknowledged: the journal keeps the records (retention never removes a
//! segment the copier has not stored) and the copier catches up, with
//! exponential backoff and `degraded` on `/healthz` meanwhile.
//!
//! Geometries go over the wire as WKB (`ST_GeomFromWKB(.., 4326)`);
//! properties as JSON text cast to `jsonb`. The schema is documented for
//! analysts in `docs/postgis.md`; migrations live in `server/migrations/`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use beeld_layers::{ChangeCause, Collection, Feature, FeatureId, Seq, Shape, Store, Timestamp};
use geo::{Geometry, Polygon};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::watch;

use super::codec::{self, Change, Record};
use super::journal::{Cursor, Durable};

/// Errors talking to PostGIS.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting or a query failed.
    #[error("postgis query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Running the migrations failed.
    #[error("postgis migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored feature could not be decoded.
    #[error("feature {collection}/{id} in beeld_features is unreadable: {source}")]
    Decode {
        /// Collection.
        collection: String,
        /// Id.
        id: String,
        /// Why.
        #[source]
        source: codec::Error,
    },
}

/// The migrations, compiled into the binary (no files needed at run time).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "picture",
    include_str!("../../migrations/0001_picture.sql"),
)];

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>>
    {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Connects (failing fast when the server is unreachable).
pub async fn connect(url: &str) -> Result<PgPool, Error> {
    Ok(PgPoolOptions::new()
        // One connection for the copier, one for start-up loading and `migrate`.
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await?)
}

/// Runs the migrations (`beeld migrate`, and at every start).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    Migrator::new(Embedded).await?.run(pool).await?;
    Ok(())
}

/// The seq PostGIS holds everything up to.
pub async fn stored_seq(pool: &PgPool) -> Result<Seq, Error> {
    let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM beeld_state")
        .fetch_one(pool)
        .await?;
    Ok(Seq(u64::try_from(seq).unwrap_or(0)))
}

/// Loads every current feature into `store` (state only) and returns the
/// stored seq. Used at start when the data directory has no journal.
pub async fn load(pool: &PgPool, store: &mut Store) -> Result<Seq, Error> {
    let seq = stored_seq(pool).await?;
    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT collection, id, record FROM beeld_features")
            .fetch_all(pool)
            .await?;
    for (collection, id, record) in rows {
        let decode_error = |source| Error::Decode {
            collection: collection.clone(),
            id: id.clone(),
            source,
        };
        let entries = codec::decode_entries(&record).map_err(decode_error)?;
        for (c, feature) in entries {
            store.restore(c, feature, None);
        }
    }
    store.advance_seq(seq);
    Ok(seq)
}

/// What `/healthz` shows about PostGIS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the last attempt succeeded.
    pub connected: bool,
    /// The seq stored in PostGIS.
    pub stored_seq: u64,
    /// The last error, while degraded.
    pub error: Option<String>,
}

/// Shared between the copier and `/healthz`.
#[derive(Debug)]
pub struct Status {
    /// `std::sync::Mutex`: written once per copier batch, read per probe.
    health: Mutex<Health>,
    /// The stored seq, also read by the snapshot thread's retention (it
    /// must keep every segment PostGIS does not have yet).
    pub stored: Arc<AtomicU64>,
}

impl Status {
    /// A status for a copier that has not connected yet.
    pub fn new(stored: Arc<AtomicU64>) -> Status {
        Status {
            health: Mutex::new(Health {
                connected: false,
                stored_seq: 0,
                error: Some("not connected yet".to_owned()),
            }),
            stored,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, health: Health) {
        self.stored.store(health.stored_seq, Ordering::Release);
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }
}

/// Most changes written per transaction: large enough to amortise the round
/// trips, small enough that one transaction stays well under a second.
pub const MAX_BATCH: usize = 20_000;

/// How long the copier lets changes collect after a batch smaller than
/// [`MAX_BATCH`]: a unit that moves every 100 ms is written about twice a
/// second instead of ten times (per-feature debounce).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// The copier task. Owned by [`crate::run`], stopped through `stop`; it
/// copies what is durable, then returns.
pub async fn copier(
    url: String,
    journal_dir: std::path::PathBuf,
    mut durable: watch::Receiver<Durable>,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut degraded_logged = false;
    loop {
        let result = copy_until_stopped(&url, &journal_dir, &mut durable, &status, &mut stop).await;
        let error = match result {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        if !degraded_logged {
            tracing::warn!(error = %error, "postgis unreachable or failing; serving from memory and the journal, degraded; retrying");
            degraded_logged = true;
        }
        let previous = status.health();
        status.set(Health {
            connected: false,
            stored_seq: previous.stored_seq,
            error: Some(error),
        });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(15));
        if status.health().connected {
            backoff = Duration::from_millis(500);
            degraded_logged = false;
        }
    }
}

async fn copy_until_stopped(
    url: &str,
    journal_dir: &std::path::Path,
    durable: &mut watch::Receiver<Durable>,
    status: &Status,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    let pool = connect(url).await?;
    migrate(&pool).await?;
    let stored = stored_seq(&pool).await?;
    let mut cursor = Cursor::new(journal_dir, stored);
    let was_degraded = !status.health().connected;
    status.set(Health {
        connected: true,
        stored_seq: stored.0,
        error: None,
    });
    if was_degraded {
        tracing::info!(
            stored_seq = stored.0,
            "postgis connected; catching up from the journal"
        );
    }
    loop {
        let target = durable.borrow_and_update().seq;
        if cursor.position() < target {
            let records = cursor.read(MAX_BATCH).map_err(|e| {
                Error::Query(sqlx::Error::Protocol(format!("reading the journal: {e}")))
            })?;
            let n_changes = write_batch(&pool, records, cursor.position()).await?;
            status.set(Health {
                connected: true,
                stored_seq: cursor.position().0,
                error: None,
            });
            if n_changes >= MAX_BATCH {
                continue;
            }
        }
        if *stop.borrow() && cursor.position() >= durable.borrow().seq {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(DEBOUNCE) => {}
            _ = stop.changed() => {}
        }
        if cursor.position() >= durable.borrow().seq && !*stop.borrow() {
            tokio::select! {
                _ = durable.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// The columns of one batch, for UNNEST.
#[derive(Default)]
struct Columns {
    upsert_collection: Vec<&'static str>,
    upsert_id: Vec<String>,
    upsert_wkb: Vec<Vec<u8>>,
    upsert_properties: Vec<String>,
    upsert_feed: Vec<String>,
    upsert_observed: Vec<i64>,
    upsert_received: Vec<i64>,
    upsert_expires: Vec<Option<i64>>,
    upsert_seq: Vec<i64>,
    upsert_record: Vec<Vec<u8>>,
    delete_collection: Vec<&'static str>,
    delete_id: Vec<String>,
    delete_seq: Vec<i64>,
    change_seq: Vec<i64>,
    change_at: Vec<i64>,
    change_collection: Vec<&'static str>,
    change_id: Vec<String>,
    change_op: Vec<&'static str>,
    change_cause: Vec<String>,
    change_wkb: Vec<Option<Vec<u8>>>,
    change_properties: Vec<Option<String>>,
}

fn seq_i64(seq: Seq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

/// Writes the records in one transaction and stores `upto` as the seq.
/// Returns the number of changes.
pub async fn write_batch(pool: &PgPool, records: Vec<Record>, upto: Seq) -> Result<usize, Error> {
    // Debounce: the last change per feature decides its current row.
    let mut last: HashMap<(Collection, FeatureId), Change> = HashMap::new();
    let mut cols = Columns::default();
    let mut n_changes = 0;
    for record in records {
        let Record::Changes { at, cause, changes } = record else {
            continue;
        };
        let cause_text = match &cause {
            ChangeCause::Write { feed } => feed.to_string(),
            ChangeCause::Expired => "expired".to_owned(),
        };
        for change in changes {
            n_changes += 1;
            let (collection, id, op, wkb, properties) = match &change {
                Change::Upsert(c, f) => (
                    *c,
                    Arc::clone(&f.id),
                    "upsert",
                    Some(wkb(&f.shape)),
                    Some(f.properties.to_string()),
                ),
                Change::Delete(c, id, _) => (*c, Arc::clone(id), "delete", None, None),
                Change::Superseded(..) => continue,
            };
            cols.change_seq.push(seq_i64(change.seq()));
            cols.change_at.push(at.0);
            cols.change_collection.push(collection.as_str());
            cols.change_id.push(id.to_string());
            cols.change_op.push(op);
            cols.change_cause.push(cause_text.clone());
            cols.change_wkb.push(wkb);
            cols.change_properties.push(properties);
            last.insert((collection, id), change);
        }
    }
    for ((collection, id), change) in last {
        match change {
            Change::Upsert(_, feature) => push_upsert(&mut cols, collection, &feature),
            Change::Delete(_, _, seq) => {
                cols.delete_collection.push(collection.as_str());
                cols.delete_id.push(id.to_string());
                cols.delete_seq.push(seq_i64(seq));
            }
            Change::Superseded(..) => {}
        }
    }
    let mut tx = pool.begin().await?;
    if !cols.upsert_id.is_empty() {
        sqlx::query(
            "INSERT INTO beeld_features
                 (collection, id, geom, properties, feed, observed_at, received_at, expires_at, seq, record)
             SELECT c, i, ST_GeomFromWKB(g, 4326), p::jsonb, f,
                    to_timestamp(o / 1000.0), to_timestamp(r / 1000.0), to_timestamp(e / 1000.0), s, b
             FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[],
                         $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::bytea[])
                  AS t(c, i, g, p, f, o, r, e, s, b)
             ON CONFLICT (collection, id) DO UPDATE SET
                 geom = EXCLUDED.geom, properties = EXCLUDED.properties, feed = EXCLUDED.feed,
                 observed_at = EXCLUDED.observed_at, received_at = EXCLUDED.received_at,
                 expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq, record = EXCLUDED.record
             WHERE beeld_features.seq < EXCLUDED.seq",
        )
        .bind(&cols.upsert_collection)
        .bind(&cols.upsert_id)
        .bind(&cols.upsert_wkb)
        .bind(&cols.upsert_properties)
        .bind(&cols.upsert_feed)
        .bind(&cols.upsert_observed)
        .bind(&cols.upsert_received)
        .bind(&cols.upsert_expires)
        .bind(&cols.upsert_seq)
        .bind(&cols.upsert_record)
        .execute(&mut *tx)
        .await?;
    }
    if !cols.delete_id.is_empty() {
        sqlx::query(
            "DELETE FROM beeld_features f
             USING UNNEST($1::text[], $2::text[], $3::int8[]) AS t(c, i, s)
             WHERE f.collection = t.c AND f.id = t.i AND f.seq < t.s",
        )
        .bind(&cols.delete_collection)
        .bind(&cols.delete_id)
        .bind(&cols.delete_seq)
        .execute(&mut *tx)
        .await?;
    }
    if !cols.change_seq.is_empty() {
        sqlx::query(
            "INSERT INTO beeld_changes (seq, at, collection, id, op, cause, geom, properties)
             SELECT s, to_timestamp(a / 1000.0), c, i, o, ca, ST_GeomFromWKB(g, 4326), p::jsonb
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::bytea[], $8::text[])
                  AS t(s, a, c, i, o, ca, g, p)
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(&cols.change_seq)
        .bind(&cols.change_at)
        .bind(&cols.change_collection)
        .bind(&cols.change_id)
        .bind(&cols.change_op)
        .bind(&cols.change_cause)
        .bind(&cols.change_wkb)
        .bind(&cols.change_properties)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE beeld_state SET seq = GREATEST(seq, $1)")
        .bind(seq_i64(upto))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n_changes)
}

fn push_upsert(cols: &mut Columns, collection: Collection, feature: &Feature) {
    let mut record = Vec::new();
    codec::encode_entry(&mut record, collection, feature);
    cols.upsert_collection.push(collection.as_str());
    cols.upsert_id.push(feature.id.to_string());
    cols.upsert_wkb.push(wkb(&feature.shape));
    cols.upsert_properties.push(feature.properties.to_string());
    cols.upsert_feed.push(feature.feed.to_string());
    cols.upsert_observed.push(feature.observed_at.0);
    cols.upsert_received.push(feature.received_at.0);
    cols.upsert_expires
        .push(feature.expires_at.map(|t: Timestamp| t.0));
    cols.upsert_seq.push(seq_i64(feature.seq));
    cols.upsert_record.push(record);
}

/// Little-endian ISO WKB of a shape (Point, Polygon or MultiPolygon).
pub fn wkb(shape: &Shape) -> Vec<u8> {
    fn polygon(out: &mut Vec<u8>, p: &Polygon<f64>) {
        out.push(1);
        out.extend_from_slice(&3u32.to_le_bytes());
        let rings = std::iter::once(p.exterior()).chain(p.interiors());
        out.extend_from_slice(
            &u32::try_from(p.interiors().len() + 1)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for ring in rings {
            out.extend_from_slice(
                &u32::try_from(ring.0.len())
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            for c in &ring.0 {
                out.extend_from_slice(&c.x.to_le_bytes());
                out.extend_from_slice(&c.y.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(32);
    match shape {
        Shape::Point(c) => {
            out.push(1);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&c.x.to_le_bytes());
            out.extend_from_slice(&c.y.to_le_bytes());
        }
        Shape::Area(area) => match &area.geometry {
            Geometry::Polygon(p) => polygon(&mut out, p),
            Geometry::MultiPolygon(mp) => {
                out.push(1);
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&u32::try_from(mp.0.len()).unwrap_or(u32::MAX).to_le_bytes());
                for p in &mp.0 {
                    polygon(&mut out, p);
                }
            }
            // Areas are polygons or multipolygons by construction; an empty
            // GeometryCollection keeps the row valid if that ever changes.
            _ => {
                out.push(1);
                out.extend_from_slice(&7u32.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
            }
        },
    }
    out
}
