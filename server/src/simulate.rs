//! Playing a scenario as the 25 regional feeds.
//!
//! `beeld simulate` sends each step over HTTP to any running beeld, each
//! region with its own token, through the public ingest API. `beeld serve
//! --demo` plays the Limburg scenario in-process through a
//! [`FeedSink`](crate::adapter::FeedSink), the same checks and batches as
//! HTTP. The scenario itself (`beeld_fixtures::scenario`) knows neither.
//!
//! Feed names are `vr01`…`vr25`; with `--regional-feeds SECRET` the server
//! accepts, and the simulator sends, tokens `SECRET-vr01`…`SECRET-vr25`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beeld_fixtures::scenario::{Scenario, Step};
use beeld_layers::Collection;
use beeld_layers::attrs::RegionCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::adapter::{BoxFuture, FeedSink};
use crate::state::now;

/// The feed name of a region (`vr24`).
pub fn feed_name(region: RegionCode) -> String {
    region.to_string().to_lowercase()
}

/// The token of a regional feed under `secret`.
pub fn feed_token(secret: &str, region_feed: &str) -> String {
    format!("{secret}-{region_feed}")
}

/// Where the player sends writes.
pub trait Outlet: Send + Sync {
    /// Upserts features into a collection as a feed; Err is a rejection.
    fn write(
        &self,
        feed: String,
        collection: Collection,
        features: Vec<Value>,
    ) -> BoxFuture<Result<(), String>>;
    /// Deletes one feature; a feature that is already gone is not an error.
    fn delete(
        &self,
        feed: String,
        collection: Collection,
        id: String,
    ) -> BoxFuture<Result<(), String>>;
}

/// Writes over HTTP with regional tokens.
#[derive(Debug, Clone)]
pub struct HttpOutlet {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl HttpOutlet {
    /// An outlet for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, secret: &str) -> HttpOutlet {
        HttpOutlet {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
        }
    }
}

impl Outlet for HttpOutlet {
    fn write(
        &self,
        feed: String,
        collection: Collection,
        features: Vec<Value>,
    ) -> BoxFuture<Result<(), String>> {
        let request = self
            .http
            .post(format!("{}/collections/{collection}/items", self.base))
            .bearer_auth(feed_token(&self.secret, &feed))
            .header("content-type", "application/geo+json")
            .body(json!({"type": "FeatureCollection", "features": features}).to_string());
        Box::pin(async move {
            let response = request.send().await.map_err(|e| format!("{feed}: {e}"))?;
            if response.status().is_success() {
                return Ok(());
            }
            let status = response.status();
            Err(format!(
                "{feed} {collection}: {status}: {}",
                response.text().await.unwrap_or_default()
            ))
        })
    }

    fn delete(
        &self,
        feed: String,
        collection: Collection,
        id: String,
    ) -> BoxFuture<Result<(), String>> {
        let request = self
            .http
            .delete(format!(
                "{}/collections/{collection}/items/{}",
                self.base,
                form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
            ))
            .bearer_auth(feed_token(&self.secret, &feed));
        Box::pin(async move {
            let response = request.send().await.map_err(|e| format!("{feed}: {e}"))?;
            // 404: it expired on its own first, which is fine.
            if response.status().is_success() || response.status() == 404 {
                return Ok(());
            }
            Err(format!(
                "{feed} delete {collection}/{id}: {}",
                response.status()
            ))
        })
    }
}

/// Writes in-process through the feed sink (the demo).
#[derive(Debug, Clone)]
pub struct SinkOutlet {
    sink: FeedSink,
}

impl SinkOutlet {
    /// An outlet into `sink`.
    pub fn new(sink: FeedSink) -> SinkOutlet {
        SinkOutlet { sink }
    }
}

impl Outlet for SinkOutlet {
    fn write(
        &self,
        feed: String,
        collection: Collection,
        features: Vec<Value>,
    ) -> BoxFuture<Result<(), String>> {
        let sink = self.sink.clone();
        Box::pin(async move {
            sink.submit(&feed, collection, features)
                .await
                .map(|_| ())
                .map_err(|p| format!("{feed} {collection}: {}", p.detail))
        })
    }

    fn delete(
        &self,
        feed: String,
        collection: Collection,
        id: String,
    ) -> BoxFuture<Result<(), String>> {
        let sink = self.sink.clone();
        Box::pin(async move {
            match sink.delete(&feed, collection, &id).await {
                Ok(_) => Ok(()),
                Err(p) if p.status == axum::http::StatusCode::NOT_FOUND => Ok(()),
                Err(p) => Err(format!("{feed} delete {collection}/{id}: {}", p.detail)),
            }
        })
    }
}

/// `beeld simulate`: play a scenario against a running server.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Built-in scenario (limburg-2021, wildfire, baseline) or a scenario TOML file.
    #[arg(long, default_value = "limburg-2021")]
    pub scenario: String,
    /// The server.
    #[arg(long, env = "BEELD_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The regional feed secret the server was started with (`--regional-feeds`).
    #[arg(long, env = "BEELD_REGIONAL_FEEDS", value_name = "SECRET")]
    pub regional_feeds: String,
    /// Simulated seconds per second; 0 plays as fast as possible.
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Multiplies the fleets (the baseline at scale 40 has 100,000 units).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Stop after this many simulated hours.
    #[arg(long)]
    pub hours: Option<f64>,
    /// The shared data folder (LIWO points, boundaries, wildfire perimeter).
    #[arg(long, env = "BEELD_SHARED_DATA", default_value = "../shared/data")]
    pub data: std::path::PathBuf,
}

/// How to play.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// Simulated seconds per wall-clock second; 0 plays as fast as possible.
    pub speed: f64,
    /// Stop after this many simulated hours.
    pub until_h: Option<f64>,
    /// Print a progress line every second to stderr.
    pub progress: bool,
}

/// What was sent.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Steps played.
    pub steps: u64,
    /// Features written.
    pub writes: u64,
    /// Features deleted.
    pub deletes: u64,
    /// Rejected requests.
    pub errors: u64,
    /// Features written per feed.
    pub per_feed: BTreeMap<String, u64>,
    /// The first rejection.
    pub first_error: Option<String>,
    /// Simulated hours reached.
    pub sim_h: f64,
}

/// Plays `scenario` into `outlet` until it ends, `until_h`, or `stop`.
pub async fn play(
    scenario: &mut Scenario,
    outlet: &dyn Outlet,
    options: &PlayOptions,
    stop: &watch::Receiver<bool>,
) -> Report {
    let started = Instant::now();
    let mut first_sim_s = None::<f64>;
    let total = scenario.total_steps();
    let name = scenario.spec().name.clone();
    let mut report = Report::default();
    let mut next_progress = Duration::from_secs(1);
    let mut last_writes = 0;
    loop {
        if *stop.borrow()
            || options
                .until_h
                .is_some_and(|h| scenario.next_sim_s() > h * 3600.0)
        {
            break;
        }
        let Some(step) = scenario.next_step() else {
            break;
        };
        let first = *first_sim_s.get_or_insert(step.sim_s);
        if options.speed > 0.0 {
            let due = Duration::from_secs_f64((step.sim_s - first) / options.speed);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        send(step.clone(), outlet, options, &mut report).await;
        report.steps += 1;
        report.sim_h = step.sim_s / 3600.0;
        if options.progress && started.elapsed() >= next_progress {
            eprintln!(
                "simulate {name}: sim +{:02}:{:02} step {}/{total} | {} writes/s | {} writes, {} deletes | {} errors",
                (step.sim_s / 3600.0) as u64,
                (step.sim_s / 60.0) as u64 % 60,
                report.steps,
                report.writes - last_writes,
                report.writes,
                report.deletes,
                report.errors
            );
            last_writes = report.writes;
            next_progress += Duration::from_secs(1);
        }
    }
    report
}

async fn send(step: Step, outlet: &dyn Outlet, options: &PlayOptions, report: &mut Report) {
    let now = now();
    let mut groups: BTreeMap<(String, Collection), Vec<Value>> = BTreeMap::new();
    for mut write in step.writes {
        let properties = &mut write.feature["properties"];
        properties["observed_at"] = json!(now.to_rfc3339());
        if let (Some(lifetime), true) = (write.lifetime_s, options.speed > 0.0) {
            // The scenario deletes it when it ends; expiry is the safety net
            // should the player stop first.
            let wall_ms = (lifetime / options.speed * 1000.0) as i64 + 60_000;
            properties["expires"] = json!(now.plus_millis(wall_ms).to_rfc3339());
        }
        groups
            .entry((feed_name(write.feed), write.collection))
            .or_default()
            .push(write.feature);
    }
    let mut pending = Vec::new();
    for ((feed, collection), features) in groups {
        *report.per_feed.entry(feed.clone()).or_default() += features.len() as u64;
        report.writes += features.len() as u64;
        for chunk in features.chunks(1000) {
            pending.push(outlet.write(feed.clone(), collection, chunk.to_vec()));
        }
    }
    for result in futures_util::future::join_all(pending).await {
        if let Err(e) = result {
            report.errors += 1;
            report.first_error.get_or_insert(e);
        }
    }
    let deletes: Vec<_> = step
        .deletes
        .into_iter()
        .map(|d| outlet.delete(feed_name(d.feed), d.collection, d.id))
        .collect();
    report.deletes += deletes.len() as u64;
    for result in futures_util::future::join_all(deletes).await {
        if let Err(e) = result {
            report.errors += 1;
            report.first_error.get_or_insert(e);
        }
    }
}
