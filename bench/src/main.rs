//! The `herald-bench` command. See the crate docs (`lib.rs`) for the
//! scenarios; `make bench` runs `herald-bench suite` and regenerates
//! `docs/benchmarks.md`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_bench::{report, scenarios, Binaries, Server, SuiteSize, Target};

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    about = "Herald's load generator: Herald and its peers, measured in the same run."
)]
struct Cli {
    /// The herald binary to start (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/herald")]
    herald: PathBuf,
    /// CPUs the servers under test run on (`taskset -c` syntax, e.g. `0`):
    /// with `--client-cpus`, servers and clients no longer share cores.
    #[arg(long, global = true)]
    server_cpus: Option<String>,
    /// CPUs the load generator itself (every client) runs on, e.g. `1`.
    #[arg(long, global = true)]
    client_cpus: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The standard set against every target; writes JSON lines, plots and
    /// the generated part of the benchmarks page.
    Suite {
        /// Targets to run (default: all whose server is installed).
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        /// Directory for results.jsonl and the plots.
        #[arg(long, default_value = "docs/benchmarks")]
        out: PathBuf,
        /// The page whose generated block is rewritten.
        #[arg(long, default_value = "docs/benchmarks.md")]
        page: PathBuf,
        /// A description of the machine and versions, put above the tables.
        #[arg(long, default_value = "")]
        environment: String,
        /// Seconds-long sizes instead of the standard ones.
        #[arg(long)]
        smoke: bool,
    },
    /// Re-renders tables and plots from a results file without running.
    Render {
        #[arg(long, default_value = "docs/benchmarks/results.jsonl")]
        results: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.md")]
        page: PathBuf,
        #[arg(long, default_value = "")]
        environment: String,
    },
    /// One fan-out run.
    Fanout {
        #[arg(long, default_value = "herald-ws-json")]
        target: String,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Messages per second; omit for as fast as possible.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 128)]
        payload: usize,
    },
    /// Every attack a client without a key can mount, each for `seconds`
    /// against Herald with its default limits, while a normal subscriber
    /// keeps receiving: peak server memory, the subscriber's latency and
    /// losses, the slowest /healthz. One JSON line per attack on stdout.
    Abuse {
        /// Connections per attack.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// The same async-nats workload against nats-server and Herald's NATS
    /// listener, fresh servers each round, alternating: JSON lines on
    /// stdout, then the table of medians and ratios.
    Nats {
        /// Seconds-long sizes, for the test suite.
        #[arg(long)]
        smoke: bool,
        /// Rounds (3 by default, 1 with --smoke).
        #[arg(long)]
        rounds: Option<usize>,
        /// Fan-out sizes, comma-separated (1,100,1000 by default).
        #[arg(long, value_delimiter = ',')]
        subscribers: Vec<usize>,
    },
    /// The ways a backend publishes (HTTP one per request, HTTP batches,
    /// pipelined WebSocket, Herald's NATS listener) and nats-server, with
    /// no subscriber, fresh servers each, rounds alternating the order:
    /// JSON lines on stdout, then the table of medians.
    Publish {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// One node vs two nodes bridged through nats-server with JetStream
    /// (subscribers split, or all on the other node), fresh servers each
    /// round, alternating: JSON lines on stdout, then the table of medians.
    Cluster {
        /// Seconds-long sizes, for the test suite.
        #[arg(long)]
        smoke: bool,
        #[arg(long)]
        subscribers: Option<usize>,
    },
    /// WebSocket (plain and over TLS) vs WebTransport subscribers (1 000 by default), fresh
    /// servers each round, alternating: JSON lines on stdout, then the
    /// table of medians.
    Quic(Rounds),
    /// nats-server at full speed, then nats-server and Herald publishing
    /// at half that rate (1 000 subscribers by default), fresh servers each
    /// run, alternating: JSON lines on stdout, then the table of medians.
    Latency(Rounds),
    /// One idle-connections run.
    Idle {
        #[arg(long, default_value = "herald-ws-json")]
        target: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds the connections are held, idle, while the server's CPU
        /// time is measured.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
    },
}

/// The size of a command that measures in alternating rounds.
#[derive(Debug, Args)]
struct Rounds {
    /// Seconds-long sizes, for the test suite.
    #[arg(long)]
    smoke: bool,
    #[arg(long)]
    subscribers: Option<usize>,
    #[arg(long)]
    rounds: Option<usize>,
}

impl Rounds {
    fn size(&self) -> herald_bench::rounds::RoundSize {
        herald_bench::rounds::RoundSize::chosen(self.smoke, self.subscribers, self.rounds)
    }
}

/// Holds this process, and every thread it starts, to `cpus`.
fn pin_this_process(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) runs")?;
    anyhow::ensure!(
        status.success(),
        "taskset could not hold the load generator to CPUs {cpus}"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before the runtime starts, so that it sizes itself to the CPUs it
    // has, as any program started on them would.
    if let Some(cpus) = &cli.client_cpus {
        pin_this_process(cpus)?;
    }
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(1 << 20);
    let binaries = Binaries {
        server_cpus: cli.server_cpus,
        ..Binaries::locate(cli.herald)
    };
    match cli.command {
        Command::Suite {
            targets,
            out,
            page,
            environment,
            smoke,
        } => {
            let targets = if targets.is_empty() {
                Target::ALL
                    .into_iter()
                    .filter(|t| binaries.can_run(*t))
                    .collect::<Vec<_>>()
            } else {
                targets
                    .iter()
                    .map(|t| Target::parse(t))
                    .collect::<anyhow::Result<_>>()?
            };
            let size = if smoke {
                SuiteSize::SMOKE
            } else {
                SuiteSize::STANDARD
            };
            let records = herald_bench::suite(&binaries, &targets, size, print_json_line).await?;
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let results = out.join("results.jsonl");
            report::write_json_lines(&results, &records)?;
            render(&records, &out, &page, &environment)
        }
        Command::Render {
            results,
            page,
            environment,
        } => {
            let records = report::read_json_lines(&results)?;
            let out = results.parent().map(PathBuf::from).unwrap_or_default();
            render(&records, &out, &page, &environment)
        }
        Command::Fanout {
            target,
            subscribers,
            rate,
            seconds,
            payload,
        } => {
            let target = Target::parse(&target)?;
            let server = Server::start(target, &binaries).await?;
            let record = scenarios::fanout(target, &server, subscribers, rate, seconds, payload).await;
            server.stop().await;
            println!("{}", serde_json::to_string(&record?)?);
            Ok(())
        }
        Command::Abuse { connections, seconds } => {
            let server = Server::herald_with_default_limits(&binaries).await?;
            let records = herald_bench::abuse::run(&server, connections, seconds).await;
            server.stop().await;
            for record in records? {
                println!("{}", serde_json::to_string(&record)?);
            }
            Ok(())
        }
        Command::Nats {
            smoke,
            rounds,
            subscribers,
        } => {
            let mut size = if smoke {
                herald_bench::nats::NatsSize::smoke()
            } else {
                herald_bench::nats::NatsSize::standard()
            };
            if let Some(rounds) = rounds {
                size.rounds = rounds;
            }
            if !subscribers.is_empty() {
                anyhow::ensure!(
                    subscribers.iter().all(|n| *n > 0),
                    "--subscribers takes counts above zero"
                );
                size.subscribers = subscribers;
            }
            let records = herald_bench::nats::run(&binaries, size, print_json_line).await?;
            print!("{}", herald_bench::nats::markdown(&records));
            Ok(())
        }
        Command::Publish { rounds, seconds } => {
            let records = herald_bench::publish::run(&binaries, rounds, seconds, print_json_line).await?;
            print!("{}", herald_bench::publish::markdown(&records));
            Ok(())
        }
        Command::Cluster { smoke, subscribers } => {
            let size = herald_bench::rounds::RoundSize::chosen(smoke, subscribers, None);
            let records = herald_bench::cluster::run(&binaries, size, print_json_line).await?;
            print!("{}", herald_bench::cluster::markdown(&records));
            Ok(())
        }
        Command::Quic(rounds) => {
            let records = herald_bench::quic::run(&binaries, rounds.size(), print_json_line).await?;
            print!("{}", herald_bench::quic::markdown(&records));
            Ok(())
        }
        Command::Latency(rounds) => {
            let records = herald_bench::latency::run(&binaries, rounds.size(), print_json_line).await?;
            print!("{}", herald_bench::latency::markdown(&records));
            Ok(())
        }
        Command::Idle {
            target,
            connections,
            hold,
        } => {
            let target = Target::parse(&target)?;
            let server = Server::start(target, &binaries).await?;
            let hold = std::time::Duration::from_secs_f64(hold);
            let record = scenarios::idle(target, &server, connections, hold).await;
            server.stop().await;
            println!("{}", serde_json::to_string(&record?)?);
            Ok(())
        }
    }
}

/// One record as a JSON line on stdout, as it is made.
fn print_json_line(record: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(record).expect("records serialize"));
}

fn render(
    records: &[herald_bench::Record],
    out: &std::path::Path,
    page: &std::path::Path,
    environment: &str,
) -> anyhow::Result<()> {
    report::plot_fanout(records, &out.join("fanout.svg"))?;
    report::plot_latency(records, &out.join("latency-cdf.svg"))?;
    let mut block = report::markdown(records, environment);
    block.push('\n');
    block.push_str(&report::core_medians(std::path::Path::new("target/criterion")));
    report::rewrite_block(page, &block)?;
    eprintln!("wrote {} and plots in {}", page.display(), out.display());
    Ok(())
}
