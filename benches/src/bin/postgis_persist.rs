//! PostGIS batch persistence: beeld's copier path (`postgis::write_batch`:
//! UNNEST upsert of current features plus the change history, in
//! transactions of up to 20,000 changes) against the peer, a plain `psql`
//! set-based UPSERT of the same rows (`\copy` into a staging table, then one
//! `INSERT … ON CONFLICT DO UPDATE`, plus, in a third database, the same
//! `INSERT` into `beeld_changes`), in the same run, on identical fresh
//! databases with the same schema. Round 1 inserts N units; round 2 moves
//! every unit (updates).
//!
//! `cargo run --release -p beeld-benches --bin postgis-persist -- [ROWS]`
//! (PostgreSQL from `BEELD_BENCH_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `psql` on `PATH`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use beeld_fixtures::{Rng, units};
use beeld_layers::{Batch, ChangeCause, Collection, Feature, Op, Seq, Store, Timestamp};
use beeld_server::persist::codec::{Change, Record};
use beeld_server::persist::postgis;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let n_rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let admin_url = std::env::var("BEELD_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let server = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(s, _)| s)
        .to_owned();
    let admin = postgis::connect(&admin_url).await.expect("postgres");
    let mut urls = Vec::new();
    for name in [
        "beeld_bench_ours",
        "beeld_bench_peer",
        "beeld_bench_peer_full",
    ] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await
            .expect("drop");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create");
        let url = format!("{server}/{name}");
        postgis::migrate(&postgis::connect(&url).await.expect("connect"))
            .await
            .expect("migrate");
        urls.push(url);
    }
    let ours = postgis::connect(&urls[0]).await.expect("connect");

    let mut fleet = units(n_rows, 5);
    let mut rng = Rng::new(9);
    let mut store = Store::default();
    let feed: Arc<str> = "bench".into();
    for round in 1..=2 {
        if round == 2 {
            for unit in &mut fleet {
                unit.step(&mut rng);
            }
        }
        let applied = store
            .apply(Batch {
                feed: Arc::clone(&feed),
                received_at: Timestamp(1_700_000_000_000 + round),
                ops: fleet
                    .iter()
                    .map(|u| Op::Upsert {
                        collection: Collection::Units,
                        draft: u.draft(),
                    })
                    .collect(),
            })
            .expect("apply");
        let features: Vec<Feature> = applied
            .changes
            .iter()
            .filter_map(|(c, id, _, _)| store.get(*c, id).cloned())
            .collect();

        // Peer: the same rows through psql.
        let mut csv = String::with_capacity(n_rows * 200);
        for f in &features {
            let wkb: String = postgis::wkb(&f.shape)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut record = Vec::new();
            beeld_server::persist::codec::encode_entry(&mut record, Collection::Units, f);
            let record: String = record.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(
                csv,
                "units,{},{wkb},\"{}\",{},{},{},{},{record}",
                f.id,
                f.properties.replace('"', "\"\""),
                f.feed,
                f.observed_at.0,
                f.received_at.0,
                f.seq.0
            );
        }
        let csv_path = std::env::temp_dir().join("beeld-bench-peer.csv");
        std::fs::write(&csv_path, csv).expect("csv");
        let upsert = format!(
            "CREATE TEMP TABLE staging (collection text, id text, wkb text, properties text, feed text, o bigint, r bigint, seq bigint, record text);
\\copy staging FROM '{}' CSV
INSERT INTO beeld_features (collection, id, geom, properties, feed, observed_at, received_at, seq, record)
SELECT collection, id, ST_GeomFromWKB(decode(wkb, 'hex'), 4326), properties::jsonb, feed,
       to_timestamp(o / 1000.0), to_timestamp(r / 1000.0), seq, decode(record, 'hex') FROM staging
ON CONFLICT (collection, id) DO UPDATE SET geom = EXCLUDED.geom, properties = EXCLUDED.properties,
    feed = EXCLUDED.feed, observed_at = EXCLUDED.observed_at, received_at = EXCLUDED.received_at,
    seq = EXCLUDED.seq, record = EXCLUDED.record;
",
            csv_path.display()
        );
        let history = "INSERT INTO beeld_changes (seq, at, collection, id, op, cause, geom, properties)
SELECT seq, to_timestamp(r / 1000.0), collection, id, 'upsert', feed, ST_GeomFromWKB(decode(wkb, 'hex'), 4326), properties::jsonb FROM staging;
";
        let psql = |url: &str, script: String| {
            let started = Instant::now();
            let status = std::process::Command::new("psql")
                .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    child
                        .stdin
                        .take()
                        .expect("stdin")
                        .write_all(script.as_bytes())?;
                    child.wait()
                })
                .expect("psql");
            assert!(status.success(), "psql failed");
            started.elapsed()
        };
        let peer = psql(&urls[1], upsert.clone());
        // The same rows with the history rows too, as beeld writes them.
        let peer_history = psql(&urls[2], format!("{upsert}{history}"));

        // Ours: the copier's batches.
        let cause = ChangeCause::Write {
            feed: Arc::clone(&feed),
        };
        let records: Vec<Record> = features
            .chunks(1000)
            .map(|chunk| Record::Changes {
                at: chunk[0].received_at,
                cause: cause.clone(),
                changes: chunk
                    .iter()
                    .map(|f| Change::Upsert(Collection::Units, f.clone()))
                    .collect(),
            })
            .collect();
        let started = Instant::now();
        for batch in records.chunks(postgis::MAX_BATCH / 1000) {
            postgis::write_batch(&ours, batch.to_vec(), Seq(0))
                .await
                .expect("write");
        }
        let ours_time = started.elapsed();
        let label = if round == 1 {
            "insert"
        } else {
            "update (every unit moved)"
        };
        println!(
            "round {round}, {label}: beeld copier (features + history) {:.0} rows/s ({:.2} s); psql set-based UPSERT: features only {:.0} rows/s ({:.2} s), features + history {:.0} rows/s ({:.2} s)",
            n_rows as f64 / ours_time.as_secs_f64(),
            ours_time.as_secs_f64(),
            n_rows as f64 / peer.as_secs_f64(),
            peer.as_secs_f64(),
            n_rows as f64 / peer_history.as_secs_f64(),
            peer_history.as_secs_f64(),
        );
    }
    ours.close().await;
    for name in [
        "beeld_bench_ours",
        "beeld_bench_peer",
        "beeld_bench_peer_full",
    ] {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
}
