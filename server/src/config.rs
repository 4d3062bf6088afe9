//! Configuration: command-line flags, `BEELD_*` environment variables and an
//! optional TOML file, in that order of precedence, over documented defaults.
//!
//! Every option is listed by `beeld serve --help`; the file format is shown
//! in `README.md`. The result is one immutable [`Config`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use beeld_layers::{Collection, Limits};
use serde::Deserialize;

/// Flags of `beeld serve`. Every flag can also be set through the named
/// environment variable or the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "BEELD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "BEELD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for durable state [default: ./data].
    #[arg(long, env = "BEELD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory with the CBS/PDOK boundary files
    /// `veiligheidsregios_2023_wgs84.geojson` and `gemeenten_2023_wgs84.geojson`
    /// [default: ../shared/data/boundaries].
    #[arg(long, env = "BEELD_BOUNDARIES", value_name = "DIR")]
    pub boundaries: Option<PathBuf>,
    /// Region boundary file, overriding the one in --boundaries.
    #[arg(long, env = "BEELD_REGIONS_FILE", value_name = "FILE")]
    pub regions_file: Option<PathBuf>,
    /// Municipality boundary file, overriding the one in --boundaries.
    #[arg(long, env = "BEELD_MUNICIPALITIES_FILE", value_name = "FILE")]
    pub municipalities_file: Option<PathBuf>,
    /// A feed and its bearer token, `NAME=TOKEN`, optionally limited to some
    /// collections: `NAME=TOKEN:units,incidents`. Repeatable. Without a
    /// collection list the feed may write every writable collection. In the
    /// environment, separate several with `;`.
    #[arg(
        long = "feed-token",
        env = "BEELD_FEED_TOKENS",
        value_name = "NAME=TOKEN[:COLLECTIONS]",
        value_delimiter = ';'
    )]
    pub feed_tokens: Vec<String>,
    /// Defines the 25 regional feeds `vr01`…`vr25` with tokens
    /// `SECRET-vr01`…`SECRET-vr25` (each may write incidents, units and
    /// hazards); what `beeld simulate` sends.
    #[arg(long, env = "BEELD_REGIONAL_FEEDS", value_name = "SECRET")]
    pub regional_feeds: Option<String>,
    /// Play the Limburg 2021 scenario in-process through the feed path, so
    /// the picture is live at once (uses the regional feeds; invents a secret
    /// when none is given).
    #[arg(long, env = "BEELD_DEMO")]
    pub demo: bool,
    /// Simulated seconds per second for `--demo` [default: 60].
    #[arg(long, env = "BEELD_DEMO_SPEED", value_name = "X")]
    pub demo_speed: Option<f64>,
    /// A token that grants read access. Repeatable. Feed tokens may read too.
    #[arg(
        long = "read-token",
        env = "BEELD_READ_TOKENS",
        value_name = "TOKEN",
        value_delimiter = ';'
    )]
    pub read_tokens: Vec<String>,
    /// Require a bearer token (a read or feed token) for reads as well
    /// [default: false; reads are open, which is meant for loopback].
    #[arg(long, env = "BEELD_REQUIRE_READ_TOKEN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_read_token: Option<bool>,
    /// Base URL used in links (e.g. `https://beeld.example.nl`) when behind a
    /// proxy [default: taken from the request's Host header].
    #[arg(long, env = "BEELD_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Log format: `human` or `json` [default: human].
    #[arg(long, env = "BEELD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest accepted request body in bytes [default: 33554432 (32 MiB)].
    #[arg(long, env = "BEELD_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most features in one POST batch [default: 10000].
    #[arg(long, env = "BEELD_MAX_BATCH_FEATURES", value_name = "N")]
    pub max_batch_features: Option<usize>,
    /// Most positions in one geometry [default: 100000].
    #[arg(long, env = "BEELD_MAX_VERTICES", value_name = "N")]
    pub max_vertices: Option<usize>,
    /// Default time-to-live of a collection, `COLLECTION=DURATION` such as
    /// `units=30m` (units s, m, h, d). Repeatable. Features written without
    /// `expires` are removed after it [default: none].
    #[arg(
        long = "ttl",
        env = "BEELD_TTL",
        value_name = "COLLECTION=DURATION",
        value_delimiter = ';'
    )]
    pub ttl: Vec<String>,
    /// A feed is reported silent after this long without a write, e.g. `5m`
    /// [default: 5m].
    #[arg(long, env = "BEELD_FEED_SILENCE", value_name = "DURATION")]
    pub feed_silence: Option<String>,
    /// How many recent changes are kept in memory for consumers [default: 262144].
    #[arg(long, env = "BEELD_CHANGE_LOG_CAPACITY", value_name = "N")]
    pub change_log_capacity: Option<usize>,
    /// Live diff tick in milliseconds: changes within a tick are coalesced
    /// [default: 100].
    #[arg(long, env = "BEELD_TICK_MS", value_name = "MS")]
    pub tick_ms: Option<u64>,
    /// Ticks a live client may have queued before it is resynchronised
    /// [default: 32, or two seconds of ticks when that is more].
    #[arg(long, env = "BEELD_CLIENT_QUEUE_TICKS", value_name = "N")]
    pub client_queue_ticks: Option<usize>,
    /// Groups of live connections whose ticks are staggered over the tick
    /// period, so that a tick's bytes go out in several small bursts, 1 to
    /// 16 [default: one per 10 ms of tick, at most 10].
    #[arg(long, env = "BEELD_TICK_PHASES", value_name = "N")]
    pub tick_phases: Option<usize>,
    /// Resyncs per minute after which a slow live client is disconnected
    /// [default: 6].
    #[arg(long, env = "BEELD_MAX_RESYNCS_PER_MINUTE", value_name = "N")]
    pub max_resyncs_per_minute: Option<usize>,
    /// Largest inbound WebSocket message in bytes [default: 65536].
    #[arg(long, env = "BEELD_WS_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub ws_max_message_bytes: Option<usize>,
    /// Inbound WebSocket messages per second per connection [default: 50].
    #[arg(long, env = "BEELD_WS_MESSAGES_PER_SECOND", value_name = "N")]
    pub ws_messages_per_second: Option<u32>,
    /// Heartbeat interval in seconds; silent clients are closed after three
    /// [default: 10].
    #[arg(long, env = "BEELD_HEARTBEAT_S", value_name = "SECONDS")]
    pub heartbeat_s: Option<u64>,
    /// How live changes are routed: `indexed`, or `naive` (every change to
    /// every subscription; the benchmark baseline) [default: indexed].
    #[arg(long, env = "BEELD_FANOUT", value_name = "MODE")]
    pub fanout: Option<crate::live::FanoutMode>,
    /// When a write is acknowledged: `fsync` (after its group commit is
    /// synced to disk; survives power loss) or `none` (after it is handed to
    /// the OS; survives a crash of beeld only) [default: fsync].
    #[arg(long, env = "BEELD_JOURNAL_SYNC", value_name = "POLICY")]
    pub journal_sync: Option<crate::persist::SyncPolicy>,
    /// Journal segment size in MiB; each closed segment is compacted into a
    /// snapshot [default: 64].
    #[arg(long, env = "BEELD_JOURNAL_SEGMENT_MIB", value_name = "MIB")]
    pub journal_segment_mib: Option<u64>,
    /// How much history (journal and snapshots) to keep for `datetime`
    /// queries and replay, e.g. `7d` [default: 7d].
    #[arg(long, env = "BEELD_HISTORY_RETENTION", value_name = "DURATION")]
    pub history_retention: Option<String>,
    /// PostgreSQL/PostGIS URL, e.g. `postgres://beeld@127.0.0.1/beeld`. When
    /// set, the picture and its history are also kept in PostGIS
    /// [default: none; the embedded journal alone].
    #[arg(long, env = "BEELD_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Built web client served at `/` for browsers [default: frontend/dist].
    #[arg(long, env = "BEELD_FRONTEND_DIR", value_name = "DIR")]
    pub frontend_dir: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The optional TOML config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    boundaries: Option<PathBuf>,
    regions_file: Option<PathBuf>,
    municipalities_file: Option<PathBuf>,
    read_tokens: Option<Vec<String>>,
    require_read_token: Option<bool>,
    public_url: Option<String>,
    log_format: Option<LogFormat>,
    regional_feeds: Option<String>,
    demo: Option<bool>,
    demo_speed: Option<f64>,
    feed_silence: Option<String>,
    change_log_capacity: Option<usize>,
    journal_sync: Option<crate::persist::SyncPolicy>,
    journal_segment_mib: Option<u64>,
    history_retention: Option<String>,
    database_url: Option<String>,
    frontend_dir: Option<PathBuf>,
    #[serde(default)]
    live: FileLive,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    ttl: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    feeds: Vec<FileFeed>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<usize>,
    max_batch_features: Option<usize>,
    max_vertices: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLive {
    tick_ms: Option<u64>,
    client_queue_ticks: Option<usize>,
    tick_phases: Option<usize>,
    max_resyncs_per_minute: Option<usize>,
    ws_max_message_bytes: Option<usize>,
    ws_messages_per_second: Option<u32>,
    heartbeat_s: Option<u64>,
    fanout: Option<crate::live::FanoutMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFeed {
    name: String,
    token: String,
    collections: Option<Vec<String>>,
}

/// A feed allowed to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedToken {
    /// Feed name, as shown in `/feeds` and on every feature it writes.
    pub name: String,
    /// Its bearer token.
    pub token: String,
    /// The collections it may write.
    pub collections: BTreeSet<Collection>,
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Durable state directory.
    pub data_dir: PathBuf,
    /// Region boundaries file.
    pub regions_file: PathBuf,
    /// Municipality boundaries file.
    pub municipalities_file: PathBuf,
    /// Feeds and their tokens.
    pub feeds: Vec<FeedToken>,
    /// Extra read tokens.
    pub read_tokens: Vec<String>,
    /// Whether reads need a token.
    pub require_read_token: bool,
    /// Base URL for links, if fixed.
    pub public_url: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most features per batch.
    pub max_batch_features: usize,
    /// Per-feature limits.
    pub limits: Limits,
    /// Default TTL per collection in ms.
    pub ttl_ms: [Option<i64>; 5],
    /// Silence threshold for `/feeds`.
    pub feed_silence: Duration,
    /// Change log capacity.
    pub change_log_capacity: usize,
    /// Live protocol settings.
    pub live: crate::live::LiveConfig,
    /// The regional feed secret, if the 25 regional feeds are defined.
    pub regional_feeds: Option<String>,
    /// Play the demo scenario at this speed.
    pub demo_speed: Option<f64>,
    /// The shared data folder the demo scenario reads (LIWO points).
    pub shared_data: PathBuf,
    /// When writes are acknowledged.
    pub journal_sync: crate::persist::SyncPolicy,
    /// Journal segment size in bytes.
    pub journal_segment_bytes: u64,
    /// History kept on disk.
    pub history_retention: Duration,
    /// PostGIS, if configured.
    pub database_url: Option<String>,
    /// The boundaries directory (the web client's base map is read from it).
    pub boundaries_dir: PathBuf,
    /// The built web client (`index.html`, `assets/`).
    pub frontend_dir: PathBuf,
}

/// A configuration problem, reported before the server starts.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for beeld.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// An option has an unusable value.
    #[error("invalid {option}: {message}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        option,
        message: message.into(),
    }
}

impl Config {
    /// Resolves flags, environment (already merged into `args` by clap), the
    /// config file and defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, Error> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| Error::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };

        let boundaries = args
            .boundaries
            .or(file.boundaries)
            .unwrap_or_else(|| PathBuf::from("../shared/data/boundaries"));
        let mut feeds = Vec::new();
        for f in file.feeds {
            let collections = match f.collections {
                Some(list) => parse_collections(&list.join(","))?,
                None => writable(),
            };
            feeds.push(FeedToken {
                name: f.name,
                token: f.token,
                collections,
            });
        }
        for spec in args.feed_tokens.iter().filter(|s| !s.trim().is_empty()) {
            feeds.push(parse_feed_token(spec)?);
        }
        let demo = args.demo || file.demo.unwrap_or(false);
        let mut regional_feeds = args.regional_feeds.or(file.regional_feeds);
        if demo && regional_feeds.is_none() {
            // Nobody outside needs these tokens: the demo writes in-process.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            regional_feeds = Some(format!("demo-{:x}-{nanos:x}", std::process::id()));
        }
        if let Some(secret) = &regional_feeds {
            for n in 1..=25 {
                let name = format!("vr{n:02}");
                feeds.push(FeedToken {
                    token: format!("{secret}-{name}"),
                    name,
                    collections: writable(),
                });
            }
        }
        check_feeds(&feeds)?;

        let mut ttl_ms = [None; 5];
        let ttl_specs = file
            .ttl
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(args.ttl.into_iter().filter(|s| !s.trim().is_empty()));
        for spec in ttl_specs {
            let (name, duration) = spec
                .split_once('=')
                .ok_or_else(|| invalid("ttl", format!("'{spec}' is not COLLECTION=DURATION")))?;
            let collection: Collection =
                name.trim()
                    .parse()
                    .map_err(|e: beeld_layers::collection::UnknownCollection| {
                        invalid("ttl", e.to_string())
                    })?;
            if !collection.is_feed_writable() {
                return Err(invalid(
                    "ttl",
                    format!("{collection} is reference data and never expires"),
                ));
            }
            let d = parse_duration(duration).map_err(|m| invalid("ttl", m))?;
            ttl_ms[collection.index()] = Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        }

        let defaults = Limits::default();
        let limits = Limits {
            max_vertices: args
                .max_vertices
                .or(file.limits.max_vertices)
                .unwrap_or(defaults.max_vertices),
            ..defaults
        };
        let max_batch_features = args
            .max_batch_features
            .or(file.limits.max_batch_features)
            .unwrap_or(10_000);
        if max_batch_features == 0 || limits.max_vertices == 0 {
            return Err(invalid("limits", "limits must be at least 1"));
        }
        let live_defaults = crate::live::LiveConfig::default();
        let tick = args
            .tick_ms
            .or(file.live.tick_ms)
            .map_or(live_defaults.tick, Duration::from_millis);
        let live = crate::live::LiveConfig {
            tick,
            queue_ticks: args
                .client_queue_ticks
                .or(file.live.client_queue_ticks)
                .unwrap_or_else(|| crate::live::LiveConfig::default_queue_ticks(tick)),
            max_resyncs_per_minute: args
                .max_resyncs_per_minute
                .or(file.live.max_resyncs_per_minute)
                .unwrap_or(live_defaults.max_resyncs_per_minute),
            max_message_bytes: args
                .ws_max_message_bytes
                .or(file.live.ws_max_message_bytes)
                .unwrap_or(live_defaults.max_message_bytes),
            messages_per_second: args
                .ws_messages_per_second
                .or(file.live.ws_messages_per_second)
                .unwrap_or(live_defaults.messages_per_second),
            heartbeat: args
                .heartbeat_s
                .or(file.live.heartbeat_s)
                .map_or(live_defaults.heartbeat, Duration::from_secs),
            fanout: args.fanout.or(file.live.fanout).unwrap_or_default(),
            phases: args
                .tick_phases
                .or(file.live.tick_phases)
                .unwrap_or_else(|| crate::live::LiveConfig::default_phases(tick)),
            ..live_defaults
        };
        if !(1..=crate::live::MAX_PHASES).contains(&live.phases) {
            return Err(invalid(
                "tick-phases",
                format!("must be 1 to {}", crate::live::MAX_PHASES),
            ));
        }
        if live.tick.is_zero() || live.queue_ticks == 0 || live.heartbeat.is_zero() {
            return Err(invalid(
                "live",
                "tick, queue and heartbeat must be positive",
            ));
        }
        let feed_silence = match args.feed_silence.or(file.feed_silence) {
            Some(text) => parse_duration(&text).map_err(|m| invalid("feed-silence", m))?,
            None => Duration::from_secs(300),
        };

        let history_retention = match args.history_retention.or(file.history_retention) {
            Some(text) => parse_duration(&text).map_err(|m| invalid("history-retention", m))?,
            None => Duration::from_secs(7 * 24 * 3600),
        };
        let journal_segment_mib = args
            .journal_segment_mib
            .or(file.journal_segment_mib)
            .unwrap_or(64);
        if journal_segment_mib == 0 {
            return Err(invalid("journal-segment-mib", "must be at least 1"));
        }

        Ok(Config {
            journal_sync: args.journal_sync.or(file.journal_sync).unwrap_or_default(),
            journal_segment_bytes: journal_segment_mib * 1024 * 1024,
            history_retention,
            database_url: args.database_url.or(file.database_url),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            regions_file: args
                .regions_file
                .or(file.regions_file)
                .unwrap_or_else(|| boundaries.join("veiligheidsregios_2023_wgs84.geojson")),
            municipalities_file: args
                .municipalities_file
                .or(file.municipalities_file)
                .unwrap_or_else(|| boundaries.join("gemeenten_2023_wgs84.geojson")),
            feeds,
            read_tokens: args
                .read_tokens
                .into_iter()
                .filter(|t| !t.is_empty())
                .chain(file.read_tokens.unwrap_or_default())
                .collect(),
            require_read_token: args
                .require_read_token
                .or(file.require_read_token)
                .unwrap_or(false),
            public_url: args
                .public_url
                .or(file.public_url)
                .map(|u| u.trim_end_matches('/').to_owned()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            max_body_bytes: args
                .max_body_bytes
                .or(file.limits.max_body_bytes)
                .unwrap_or(32 * 1024 * 1024),
            max_batch_features,
            limits,
            ttl_ms,
            feed_silence,
            change_log_capacity: args
                .change_log_capacity
                .or(file.change_log_capacity)
                .unwrap_or(262_144),
            live,
            regional_feeds,
            demo_speed: demo.then(|| args.demo_speed.or(file.demo_speed).unwrap_or(60.0)),
            shared_data: boundaries
                .parent()
                .map_or_else(|| PathBuf::from("../shared/data"), Path::to_path_buf),
            frontend_dir: args
                .frontend_dir
                .or(file.frontend_dir)
                .unwrap_or_else(|| PathBuf::from("frontend/dist")),
            boundaries_dir: boundaries,
        })
    }

    /// A configuration for tests and embedding: loopback, the given
    /// boundaries directory, defaults elsewhere.
    pub fn for_boundaries(boundaries: &Path) -> Config {
        let args = ServeArgs {
            boundaries: Some(boundaries.to_path_buf()),
            ..ServeArgs::default()
        };
        Config::resolve(args).expect("defaults are valid")
    }
}

fn writable() -> BTreeSet<Collection> {
    Collection::ALL
        .into_iter()
        .filter(|c| c.is_feed_writable())
        .collect()
}

fn parse_collections(list: &str) -> Result<BTreeSet<Collection>, Error> {
    let mut set = BTreeSet::new();
    for name in list
        .split([',', '+'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let c: Collection =
            name.parse()
                .map_err(|e: beeld_layers::collection::UnknownCollection| {
                    invalid("feed-token", e.to_string())
                })?;
        if !c.is_feed_writable() {
            return Err(invalid(
                "feed-token",
                format!("{c} is reference data; feeds cannot write it"),
            ));
        }
        set.insert(c);
    }
    if set.is_empty() {
        return Err(invalid("feed-token", "empty collection list"));
    }
    Ok(set)
}

/// Parses `NAME=TOKEN[:COLLECTION,COLLECTION]`.
pub fn parse_feed_token(spec: &str) -> Result<FeedToken, Error> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| {
        invalid(
            "feed-token",
            format!(
                "'{}' is not NAME=TOKEN",
                spec.split(':').next().unwrap_or("")
            ),
        )
    })?;
    let (token, collections) = match rest.split_once(':') {
        Some((token, list)) => (token, parse_collections(list)?),
        None => (rest, writable()),
    };
    Ok(FeedToken {
        name: name.trim().to_owned(),
        token: token.trim().to_owned(),
        collections,
    })
}

fn check_feeds(feeds: &[FeedToken]) -> Result<(), Error> {
    let mut names = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for f in feeds {
        let name_ok = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(invalid(
                "feed-token",
                format!(
                    "feed name '{}' must be 1-64 letters, digits, '-', '_' or '.'",
                    f.name
                ),
            ));
        }
        if f.token.len() < 8 {
            return Err(invalid(
                "feed-token",
                format!("token of feed '{}' is shorter than 8 characters", f.name),
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(invalid(
                "feed-token",
                format!("feed '{}' is configured twice", f.name),
            ));
        }
        if !tokens.insert(f.token.as_str()) {
            return Err(invalid(
                "feed-token",
                format!("feed '{}' reuses another feed's token", f.name),
            ));
        }
    }
    Ok(())
}

/// Parses `90s`, `30m`, `2h`, `1d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 30m, 2h or 1d"))?;
    let seconds = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("'{text}' has an unknown unit; use s, m, h or d")),
    };
    if seconds == 0 {
        return Err("a duration must be positive".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_token_with_collections() {
        let f = parse_feed_token("vr24-gms=s3cret-token:units,incidents").unwrap();
        assert_eq!(f.name, "vr24-gms");
        assert_eq!(f.collections.len(), 2);
        assert!(parse_feed_token("x=s3cret-token:regions").is_err());
        assert_eq!(
            parse_feed_token("x=s3cret-token")
                .unwrap()
                .collections
                .len(),
            3
        );
    }

    #[test]
    fn file_flags_and_defaults_merge() {
        let dir = std::env::temp_dir().join(format!("beeld-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("beeld.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nfeed_silence = \"2m\"\n[ttl]\nunits = \"30m\"\n[[feeds]]\nname = \"vr23\"\ntoken = \"tok-vr23-abc\"\ncollections = [\"units\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.feed_silence, Duration::from_secs(120));
        assert_eq!(c.ttl_ms[Collection::Units.index()], Some(1_800_000));
        assert_eq!(c.feeds[0].collections.len(), 1);
        assert_eq!(c.max_batch_features, 10_000);
    }

    #[test]
    fn the_tick_queue_holds_two_seconds_at_short_ticks() {
        let resolve = |tick_ms: u64, queue: Option<usize>| {
            let args = ServeArgs {
                tick_ms: Some(tick_ms),
                client_queue_ticks: queue,
                ..ServeArgs::default()
            };
            Config::resolve(args).unwrap().live.queue_ticks
        };
        assert_eq!(resolve(100, None), 32);
        assert_eq!(resolve(10, None), 200);
        assert_eq!(resolve(1, None), 2_000);
        assert_eq!(resolve(10, Some(8)), 8, "a flag wins");
    }

    #[test]
    fn ticks_are_staggered_in_groups_of_10_ms() {
        let resolve = |tick_ms: u64, phases: Option<usize>| {
            let args = ServeArgs {
                tick_ms: Some(tick_ms),
                tick_phases: phases,
                ..ServeArgs::default()
            };
            Config::resolve(args).map(|c| c.live.phases)
        };
        assert_eq!(resolve(100, None).unwrap(), 10);
        assert_eq!(resolve(50, None).unwrap(), 5);
        assert_eq!(resolve(10, None).unwrap(), 1);
        assert_eq!(resolve(1000, None).unwrap(), 10);
        assert_eq!(resolve(100, Some(4)).unwrap(), 4, "a flag wins");
        assert!(resolve(100, Some(0)).is_err());
        assert!(resolve(100, Some(17)).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5 minutes").is_err());
    }
}
