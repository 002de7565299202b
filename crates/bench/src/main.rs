//! `opsconductor-bench`: figures for docs/benchmarks.md. Each benchmark measures its baseline in
//! the same run, because these machines are noisy: report ratios, not absolutes.
//!
//! Build both binaries in release first, so `startup` finds `opsconductor` beside this one:
//! `cargo build --release -p opsconductor -p opsconductor-bench`.

mod audit;
mod chaos;
mod getuser;
mod messaging;
mod notifications;
mod render;
mod reveal;
mod runs;
mod schedules;
mod startup;
mod stats;
mod tokens;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Time from `opsconductor up` to every service SERVING, and idle RSS.
    Startup {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Unary GetUser at N calls in flight on one connection: plain tonic, the platform's
    /// layers, the user service with the auth layer off and on; token fetches per 100k calls.
    Getuser {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Lifetime of the client's service tokens, in seconds (production: 600).
        #[arg(long, default_value_t = 20)]
        token_ttl: u64,
    },
    /// Publish + consume through the platform vs raw lapin; outbox commit -> consumer latency.
    Messaging {
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Audit ingest from the queue: into the hash chain vs into a plain table, SQLite and
    /// PostgreSQL.
    Audit {
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// RevealCredential latency p50/p99, administrator and executor (with the run check),
    /// against GetCredential.
    Reveal {
        #[arg(long, default_value_t = 1000)]
        calls: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// StartRun -> first step p50/p99 (one in flight, and at a rate), runs/s with one and two
    /// executors, WatchRun log-line latency.
    Runs {
        #[arg(long, default_value_t = 200)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// PostgreSQL instead of SQLite.
        #[arg(long)]
        postgres: bool,
    },
    /// The scheduler: CreateSchedule rate, restart to first fire, sustained fires/s and fire
    /// lag p50/p99 across replicas, against StartRun called directly at the same rate.
    Schedules {
        #[arg(long, default_value_t = 100_000)]
        schedules: usize,
        /// Each schedule fires every this many seconds (schedules / period = fires/s).
        #[arg(long, default_value_t = 200)]
        period: u64,
        /// How long fires are measured (at most the period: each schedule fires once in it).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Scheduler replicas on the one database (PostgreSQL; SQLite runs one).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long)]
        postgres: bool,
    },
    /// Webhook deliveries/s through one notification replica to a local receiver, against a
    /// plain reqwest loop to the same receiver; SendNotification -> received p50/p99 at a rate.
    Notifications {
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        postgres: bool,
    },
    /// Load and chaos: two replicas of every service under steady load, runs, a schedule and
    /// webhooks, through broker, process and database faults; what was lost or repeated.
    Chaos {
        /// Seconds of steady load before the drills.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        callers: usize,
        /// Runs started per second.
        #[arg(long, default_value_t = 4)]
        rate: u32,
    },
    /// A token check: full Ed25519 verification vs a verified-token cache hit.
    Tokens {
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// A notification template rendered in-process vs in `opsconductor render-sandbox`
    /// children; what a template bomb costs.
    Render {
        #[arg(long, default_value_t = 2_000)]
        renders: usize,
    },
}

/// The `opsconductor` binary built beside this one (release: see the top of this file).
fn opsconductor_binary() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let bin = std::env::current_exe()?
        .parent()
        .context("no parent dir")?
        .join("opsconductor");
    if !bin.exists() {
        anyhow::bail!(
            "{} not found: build it with cargo build --release -p opsconductor",
            bin.display()
        );
    }
    Ok(bin)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Startup { runs } => startup::run(runs).await,
        Bench::Getuser {
            concurrency,
            seconds,
            rounds,
            token_ttl,
        } => getuser::run(concurrency, seconds, rounds, token_ttl).await,
        Bench::Messaging { messages, rounds } => messaging::run(messages, rounds).await,
        Bench::Tokens { seconds } => tokens::run(seconds),
        Bench::Render { renders } => render::run(renders).await,
        Bench::Chaos {
            seconds,
            callers,
            rate,
        } => {
            chaos::run(chaos::Options {
                seconds,
                callers,
                rate,
            })
            .await
        }
        Bench::Notifications {
            deliveries,
            concurrency,
            rate,
            seconds,
            postgres,
        } => {
            notifications::run(notifications::Options {
                deliveries,
                concurrency,
                rate,
                seconds,
                postgres,
            })
            .await
        }
        Bench::Audit { events, rounds } => audit::run(events, rounds).await,
        Bench::Reveal { calls, rounds } => reveal::run(calls, rounds).await,
        Bench::Runs {
            runs,
            rate,
            postgres,
        } => runs::run(runs, rate, postgres).await,
        Bench::Schedules {
            schedules,
            period,
            seconds,
            replicas,
            postgres,
        } => {
            schedules::run(schedules::Options {
                schedules,
                period,
                seconds: seconds.min(period),
                replicas,
                postgres,
            })
            .await
        }
    }
}
