//! The `zerostate` command line: run a node, print or create its identity.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use zerostate::config::{Config, Overrides};
use zerostate::identity;

/// How long a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(
    name = "zerostate",
    version,
    about = "A libp2p node for a decentralized compute market, with Prometheus metrics.",
    after_help = "Every config key can also be set in the TOML file (--config) or as a ZEROSTATE_* \
environment variable; precedence is flag > env > file > default. See config/default.toml."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Node(NodeArgs),
    /// Print this node's peer id (from the identity key in the data dir).
    Id(DirArgs),
    /// Create a new identity key in the data dir (refuses to overwrite one).
    Keygen(DirArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file (every key is listed in config/default.toml).
    #[arg(long, short = 'c', env = "ZEROSTATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the identity key, API token and state [default: zerostate-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Multiaddr to listen on; repeat for several [default: /ip4/0.0.0.0/tcp/4001 and
    /// /ip4/0.0.0.0/udp/4001/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Bootstrap peer, a multiaddr ending in /p2p/<peer id>; repeat for several.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Address of the HTTP server (/metrics, /health, /ready, /api/v1) [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
}

#[derive(Args)]
struct DirArgs {
    #[command(flatten)]
    common: ConfigArgs,
}

fn load_config(common: &ConfigArgs, mut flags: Overrides) -> anyhow::Result<Config> {
    flags.data_dir = common.data_dir.clone();
    Config::load(common.config.as_deref(), std::env::vars(), &flags)
        .context("invalid configuration")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => run_node(args),
        Command::Id(args) => print_id(args),
        Command::Keygen(args) => keygen(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_id(args: DirArgs) -> anyhow::Result<()> {
    let config = load_config(&args.common, Overrides::default())?;
    let key = identity::load(&config.data_dir)?.with_context(|| {
        format!(
            "no identity key in {}; run `zerostate keygen --data-dir {}` or start the node once",
            config.data_dir.display(),
            config.data_dir.display()
        )
    })?;
    println!("{}", key.public().to_peer_id());
    Ok(())
}

fn keygen(args: DirArgs) -> anyhow::Result<()> {
    let config = load_config(&args.common, Overrides::default())?;
    // A running node holds the lock: never swap its identity under it.
    let _lock = identity::lock_data_dir(&config.data_dir)?;
    let key = identity::generate(&config.data_dir)?;
    eprintln!(
        "created {}",
        config.data_dir.join(identity::KEY_FILE).display()
    );
    println!("{}", key.public().to_peer_id());
    Ok(())
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let flags = Overrides {
        listen: args.listen,
        bootstrap: args.bootstrap,
        http: args.http,
        data_dir: None,
    };
    let config = load_config(&args.common, flags)?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(&config.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        // Handlers first, so a signal during startup also ends in a graceful exit.
        let signal = shutdown_signal()?;
        tokio::pin!(signal);
        let node = tokio::select! {
            node = zerostate::start(config) => node?,
            signal = &mut signal => {
                tracing::info!(signal, "stopped during startup");
                return Ok(());
            }
        };
        let health = node.health().clone();
        let failure = tokio::select! {
            signal = signal => {
                tracing::info!(signal, "shutting down");
                None
            }
            reason = health.failed() => Some(reason),
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, node.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("graceful shutdown took longer than {SHUTDOWN_TIMEOUT:?}; exiting");
        }
        match failure {
            None => Ok(()),
            Some(reason) => Err(anyhow::anyhow!("the node failed: {reason}")),
        }
    })
}

/// The log filter of `log`, with one addition: libp2p-identify logs every change of a
/// peer's view of our address at INFO, which a peer can repeat at will; it is kept at WARN
/// unless `log` says otherwise about `libp2p_identify`.
fn log_filter(log: &str) -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::new(log);
    if log.contains("libp2p_identify") {
        filter
    } else {
        filter.add_directive("libp2p_identify=warn".parse().expect("valid directive"))
    }
}

/// Installs SIGINT and SIGTERM handlers; the future resolves to the name of the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(log: &str) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(log_filter(log))
            .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "libp2p_identify::behaviour", "Our observed address changed");
            tracing::info!(target: "zerostate::node", "node started");
        });
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_peer_cannot_fill_the_log_with_observed_address_changes() {
        let out = logged("info");
        assert!(out.contains("node started"), "{out}");
        assert!(!out.contains("observed address"), "{out}");
        let out = logged("info,libp2p_identify=info");
        assert!(
            out.contains("observed address"),
            "an explicit setting wins: {out}"
        );
    }
}
