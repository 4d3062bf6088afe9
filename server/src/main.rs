//! `beeld`: the command line. Parses flags, sets up logging, binds the
//! listener and hands over to [`beeld_server::run`].

use anyhow::Context as _;
use beeld_server::config::{Config, ServeArgs};
use clap::{Parser, Subcommand};

/// beeld: a real-time common operational picture server (landelijk operationeel beeld).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the picture over HTTP (OGC API Features, feed ingest, /feeds, /healthz).
    Serve(Box<ServeArgs>),
    /// Play a scenario against a running server as the 25 regional feeds.
    Simulate(beeld_server::simulate::SimulateArgs),
    /// Create or upgrade the PostGIS schema, then exit.
    Migrate {
        /// PostgreSQL/PostGIS URL.
        #[arg(long, env = "BEELD_DATABASE_URL", value_name = "URL")]
        database_url: String,
    },
}

/// glibc malloc spent ~40% of ingest time in `malloc_consolidate` and
/// friends under many small JSON allocations (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(*args).context("invalid configuration")?;
            beeld_server::telemetry::init(config.log_format);
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            beeld_server::run(listener, config, beeld_server::shutdown::signal()).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Simulate(args) => {
            let spec = beeld_fixtures::scenario::Spec::load(&args.scenario)?;
            let mut scenario =
                beeld_fixtures::scenario::Scenario::new(spec, &args.data, args.scale)
                    .with_context(|| {
                        format!("cannot prepare scenario from {}", args.data.display())
                    })?;
            eprintln!(
                "simulate {}: {} units, {} steps, speed {}, target {}",
                scenario.spec().name,
                scenario.unit_count(),
                scenario.total_steps(),
                if args.speed > 0.0 {
                    format!("{}x", args.speed)
                } else {
                    "as fast as possible".to_owned()
                },
                args.target
            );
            let outlet =
                beeld_server::simulate::HttpOutlet::new(&args.target, &args.regional_feeds);
            let options = beeld_server::simulate::PlayOptions {
                speed: args.speed,
                until_h: args.hours,
                progress: true,
            };
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                beeld_server::shutdown::signal().await;
                let _ = stop_tx.send(true);
            });
            let report =
                beeld_server::simulate::play(&mut scenario, &outlet, &options, &stop).await;
            eprintln!(
                "simulate {}: done at +{:.1} h: {} steps, {} writes, {} deletes, {} errors, {} feeds",
                scenario.spec().name,
                report.sim_h,
                report.steps,
                report.writes,
                report.deletes,
                report.errors,
                report.per_feed.len()
            );
            if let Some(first) = report.first_error {
                anyhow::bail!("{} writes were rejected; first: {first}", report.errors);
            }
            Ok(())
        }
        Command::Migrate { database_url } => {
            beeld_server::telemetry::init(beeld_server::config::LogFormat::Human);
            let pool = beeld_server::persist::postgis::connect(&database_url)
                .await
                .context("cannot connect to postgis")?;
            beeld_server::persist::postgis::migrate(&pool)
                .await
                .context("migration failed")?;
            tracing::info!("postgis schema is up to date");
            Ok(())
        }
    }
}
