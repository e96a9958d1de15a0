//! The `zerostate` command line: run a node, print or create its identity.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use zerostate::client::{Change, Client, ClientError, run_load};
use zerostate::config::{Config, LogConfig, LogFormat, Overrides};
use zerostate::http::Page;
use zerostate::identity;
use zerostate::market::wire::AuctionType;
use zerostate::market::{ResultView, TaskParams, TaskRequest, TaskStatus};
use zerostate::payments::{PaymentId, PaymentKind, PaymentView};

/// How long a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Exit code of `channel open`, `pay` and `close` when the node signed and sent the change
/// but the peer has not countersigned it yet.
const EXIT_PENDING: u8 = 3;

/// The exit codes of the channel commands that change a channel.
const CHANGE_EXIT_CODES: &str = "Exit codes: 0 done (countersigned by the peer); 1 error (refused: \
nothing was paid; or no answer from the node: retry with the same --payment-id); 2 bad usage; 3 \
pending: signed and sent, but the peer has not countersigned yet. The node keeps the signed state \
and re-sends it until the peer answers; retrying with the same --payment-id is safe, it never \
pays (or opens) twice.";

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
    /// Print this node's peer id (from the identity key in the data dir). A bootstrap address
    /// for others is one of its listen addresses followed by /p2p/<this id>, e.g.
    /// /ip4/203.0.113.7/tcp/4001/p2p/<id>.
    Id(DirArgs),
    /// Create a new identity key in the data dir (refuses to overwrite one).
    Keygen(DirArgs),
    /// Submit, show and list tasks of a running node.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Show a running node's reputation of the peers that executed its tasks.
    Reputation(ListArgs),
    /// Submit tasks at a steady rate to running nodes and show progress and latency.
    Load(LoadArgs),
    /// Show a running node's wallet: its credit, what is in channels and locked in escrow.
    Wallet(ApiArgs),
    /// Open, pay, close, list and show a running node's payment channels.
    #[command(subcommand)]
    Channel(ChannelCommand),
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Open a channel to a peer; prints it once the peer countersigned state 0.
    ///
    /// Sends a payment id (printed first; chosen at random unless --payment-id is given): a
    /// retry with the same id never opens a second channel.
    #[command(after_help = CHANGE_EXIT_CODES)]
    Open {
        #[command(flatten)]
        api: ApiArgs,
        /// The peer's id.
        #[arg(long)]
        peer: String,
        /// What this node puts in (from its wallet).
        #[arg(long)]
        deposit: u64,
        /// What the peer is asked to put in (it refuses more than its
        /// payments.max_counterparty_deposit).
        #[arg(long, default_value_t = 0)]
        peer_deposit: u64,
        /// The payment id of an earlier attempt to retry (1 to 128 of A-Z a-z 0-9 - _ . :).
        #[arg(long)]
        payment_id: Option<String>,
    },
    /// Pay an amount to the channel's other party; prints the channel once countersigned.
    ///
    /// Sends a payment id (printed first; chosen at random unless --payment-id is given): a
    /// retry with the same id never pays twice; the node answers with the first attempt's
    /// payment, pending or done.
    #[command(after_help = CHANGE_EXIT_CODES)]
    Pay {
        #[command(flatten)]
        api: ApiArgs,
        /// The channel id (64 hex digits).
        id: String,
        /// The amount, in the smallest unit.
        amount: u64,
        /// The payment id of an earlier attempt to retry (1 to 128 of A-Z a-z 0-9 - _ . :).
        #[arg(long)]
        payment_id: Option<String>,
    },
    /// Close a channel: cooperatively (both sign a final state), or unilaterally (settles
    /// after the challenge window unless the peer disputes with a higher state).
    #[command(after_help = CHANGE_EXIT_CODES)]
    Close {
        #[command(flatten)]
        api: ApiArgs,
        /// The channel id (64 hex digits).
        id: String,
        /// Close without the peer's signature (when it does not answer).
        #[arg(long)]
        unilateral: bool,
    },
    /// List the node's channels, newest first.
    List(ListArgs),
    /// Show a channel: balances, locks, status.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The channel id (64 hex digits).
        id: String,
    },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Submit a task to the market; prints its id.
    Submit(SubmitArgs),
    /// Show a task: timeline, bids, winner, price, verification.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The task id (32 hex digits).
        id: String,
    },
    /// List the node's tasks, newest first.
    List(ListArgs),
    /// Print a task's verified result: a pow task's nonce, or a matmul task's product
    /// (fetched through the node and saved with --out).
    Result {
        #[command(flatten)]
        api: ApiArgs,
        /// The task id (32 hex digits).
        id: String,
        /// Save the result to this file: the product's bytes (n·n little-endian u64, row-major),
        /// or the nonce as text.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Which page of a list to show.
#[derive(Args, Clone, Copy)]
struct PageArgs {
    /// Skip this many entries.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Show at most this many (1..=500).
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// A list command: where the node's API is, and which page to show.
#[derive(Args, Clone)]
struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    page: PageArgs,
}

/// Where the node's API is.
#[derive(Args, Clone)]
struct ApiArgs {
    /// The node's data dir: the API address comes from its node.json, the token from its
    /// api-token file [default: zerostate-data].
    #[arg(long, value_name = "DIR", conflicts_with = "api")]
    data_dir: Option<PathBuf>,
    /// The API's address, e.g. 127.0.0.1:9464 or http://127.0.0.1:9464 (instead of
    /// --data-dir).
    #[arg(long, value_name = "ADDR")]
    api: Option<String>,
    /// The API token (for submitting); read from the data dir if not given.
    #[arg(
        long,
        env = "ZEROSTATE_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Args, Clone)]
struct TaskArgs {
    /// Task kind.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// pow: leading zero bits wanted (1..=32).
    #[arg(long)]
    difficulty: Option<u32>,
    /// pow: the input text (random if absent).
    #[arg(long)]
    input: Option<String>,
    /// matmul: the matrix dimension (1..=512).
    #[arg(long)]
    n: Option<u32>,
    /// The highest price to pay [default: the node's market.default_max_price].
    #[arg(long)]
    max_price: Option<u64>,
    /// Auction type.
    #[arg(long, value_enum, default_value = "second-price")]
    auction: AuctionArg,
    /// Rank bids by price alone, without the node's reputation of the bidders.
    #[arg(long)]
    no_reputation_weighting: bool,
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    task: TaskArgs,
}

#[derive(Args)]
struct LoadArgs {
    /// Data dir of a node to load; repeat for several (tasks go round-robin)
    /// [default: zerostate-data].
    #[arg(long, value_name = "DIR", conflicts_with = "api")]
    data_dir: Vec<PathBuf>,
    /// API address of a node to load, e.g. 127.0.0.1:9464 (instead of --data-dir); repeat
    /// for several.
    #[arg(long, value_name = "ADDR")]
    api: Vec<String>,
    /// The API token for --api nodes.
    #[arg(
        long,
        env = "ZEROSTATE_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Tasks submitted per second, over all nodes.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// How long to submit, in seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Task kind: pow, matmul, or mixed (alternating).
    #[arg(long, value_enum, default_value = "mixed")]
    kind: LoadKind,
    /// Difficulty of pow tasks.
    #[arg(long, default_value_t = 12)]
    difficulty: u32,
    /// Dimension of matmul tasks.
    #[arg(long, default_value_t = 64)]
    n: u32,
    /// Seconds to wait after the last submission for tasks to end.
    #[arg(long, default_value_t = 60)]
    drain: u64,
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
        Command::Task(command) => run_client(task_command(command)),
        Command::Reputation(args) => run_client(reputation(args)),
        Command::Load(args) => run_client(load(args)),
        Command::Wallet(api) => {
            run_client(async move { print_json(&client(&api)?.wallet().await?) })
        }
        Command::Channel(command) => match run_client(channel_command(command)) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
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
    init_logging(&config.log)?;
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

fn run_client<T>(fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter("warn"))
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(fut)
}

fn client(api: &ApiArgs) -> anyhow::Result<Client> {
    match &api.api {
        Some(address) => Client::from_address(address, api.token.clone()).context("invalid --api"),
        None => {
            let dir = api
                .data_dir
                .clone()
                .unwrap_or_else(|| Config::default().data_dir);
            Ok(Client::from_data_dir(&dir, api.token.clone())?)
        }
    }
}

/// A task kind on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum KindArg {
    /// Proof of work (`--difficulty`, optional `--input`).
    Pow,
    /// Matrix multiplication (`--n`).
    Matmul,
}

/// An auction type on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AuctionArg {
    /// The winner pays its own bid.
    FirstPrice,
    /// The winner pays the runner-up's bid (weighted by reputation when the auction is), or
    /// the maximum price when it bid alone.
    SecondPrice,
}

impl From<AuctionArg> for AuctionType {
    fn from(a: AuctionArg) -> Self {
        match a {
            AuctionArg::FirstPrice => AuctionType::FirstPrice,
            AuctionArg::SecondPrice => AuctionType::SecondPrice,
        }
    }
}

/// The kinds a load submits.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LoadKind {
    /// Only pow tasks.
    Pow,
    /// Only matmul tasks.
    Matmul,
    /// pow and matmul, alternating.
    Mixed,
}

fn task_request(t: &TaskArgs) -> anyhow::Result<TaskRequest> {
    let params = match t.kind {
        KindArg::Pow => {
            anyhow::ensure!(t.n.is_none(), "--n is for matmul tasks");
            TaskParams::Pow {
                difficulty: t
                    .difficulty
                    .context("--difficulty is required for pow tasks (1..=32)")?,
                input: t.input.clone(),
            }
        }
        KindArg::Matmul => {
            anyhow::ensure!(
                t.difficulty.is_none() && t.input.is_none(),
                "--difficulty and --input are for pow tasks"
            );
            TaskParams::Matmul {
                n: t.n.context("--n is required for matmul tasks (1..=512)")?,
            }
        }
    };
    Ok(TaskRequest {
        params,
        max_price: t.max_price,
        auction_type: Some(t.auction.into()),
        reputation_weighted: t.no_reputation_weighting.then_some(false),
    })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a page as JSON on stdout and, on stderr, how many `what` come after it and how to
/// see them.
fn print_page<T: serde::Serialize>(page: &Page<T>, what: &str) -> anyhow::Result<()> {
    print_json(page)?;
    let remaining = page.remaining();
    if remaining > 0 {
        let next = page.offset + page.items.len();
        eprintln!(
            "{} of {} {what} shown; {remaining} more: add --offset {next}",
            page.items.len(),
            page.total
        );
    }
    Ok(())
}

async fn task_command(command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::Submit(args) => {
            let request = task_request(&args.task)?;
            request.validate().map_err(anyhow::Error::msg)?;
            println!("{}", client(&args.api)?.submit(&request).await?);
            Ok(())
        }
        TaskCommand::Show { api, id } => print_json(&client(&api)?.task(&id).await?),
        TaskCommand::List(ListArgs { api, page }) => print_page(
            &client(&api)?.tasks(page.offset, page.limit).await?,
            "tasks",
        ),
        TaskCommand::Result { api, id, out } => task_result(&client(&api)?, &id, out).await,
    }
}

/// `task result`: the verified result, printed or saved.
async fn task_result(client: &Client, id: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let task = client.task(id).await?;
    let Some(result) = task.result else {
        let why = match (task.status, task.error) {
            (TaskStatus::Running, _) => "it is still running; try again when it ends".to_owned(),
            (status, Some(error)) => format!("it ended `{}`: {error}", status.label()),
            (status, None) => format!("it ended `{}`", status.label()),
        };
        anyhow::bail!("task {id} has no verified result: {why}");
    };
    match (result, out) {
        (ResultView::Nonce(nonce), None) => println!("{nonce}"),
        (ResultView::Nonce(nonce), Some(path)) => {
            std::fs::write(&path, format!("{nonce}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote the nonce {nonce} to {}", path.display());
        }
        (ResultView::Product(cid), None) => {
            println!("{cid}");
            eprintln!("the product's content id; add --out FILE to save its bytes");
        }
        (ResultView::Product(cid), Some(path)) => {
            let bytes = client.content(&cid).await?;
            std::fs::write(&path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote the product {cid} ({} bytes: n·n little-endian u64, row-major) to {}",
                bytes.len(),
                path.display()
            );
        }
    }
    Ok(())
}

async fn channel_command(command: ChannelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ChannelCommand::Open {
            api,
            peer,
            deposit,
            peer_deposit,
            payment_id,
        } => {
            let payment_id = payment_id_of(payment_id)?;
            let change = client(&api)?
                .open_channel(&peer, deposit, peer_deposit, Some(payment_id.as_str()))
                .await;
            changed(change)
        }
        ChannelCommand::Pay {
            api,
            id,
            amount,
            payment_id,
        } => {
            let payment_id = payment_id_of(payment_id)?;
            let change = client(&api)?
                .pay(&id, amount, Some(payment_id.as_str()))
                .await;
            changed(change)
        }
        ChannelCommand::Close {
            api,
            id,
            unilateral,
        } => match client(&api)?.close_channel(&id, unilateral).await {
            Err(ClientError::Pending { message }) => {
                eprintln!("PENDING (exit code {EXIT_PENDING}): {message}");
                Ok(ExitCode::from(EXIT_PENDING))
            }
            other => print_json(&other?).map(|()| ExitCode::SUCCESS),
        },
        ChannelCommand::List(ListArgs { api, page }) => print_page(
            &client(&api)?.channels(page.offset, page.limit).await?,
            "channels",
        )
        .map(|()| ExitCode::SUCCESS),
        ChannelCommand::Show { api, id } => {
            print_json(&client(&api)?.channel(&id).await?).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// The payment id to send: the one given (checked), or a new one; printed first, so an
/// attempt that dies on the way can be retried with it.
fn payment_id_of(given: Option<String>) -> anyhow::Result<PaymentId> {
    let id = match given {
        Some(s) => PaymentId::parse(&s).with_context(|| format!("--payment-id `{s}`"))?,
        None => PaymentId::random(),
    };
    eprintln!("payment id: {id} (to retry without paying twice, add --payment-id {id})");
    Ok(id)
}

/// Prints what a change came to: done (the channel, exit 0) or pending (what it means, exit
/// [`EXIT_PENDING`]).
fn changed(change: Result<Change, ClientError>) -> anyhow::Result<ExitCode> {
    match change? {
        Change::Done { channel, replayed } => {
            if replayed {
                eprintln!(
                    "already done by an earlier request with this payment id: nothing new was paid"
                );
            }
            print_json(&channel)?;
            Ok(ExitCode::SUCCESS)
        }
        Change::Pending(view) => {
            print_json(&view)?;
            eprintln!("{}", pending_text(&view));
            Ok(ExitCode::from(EXIT_PENDING))
        }
    }
}

/// A pending change in words.
fn pending_text(view: &PaymentView) -> String {
    let what = match view.kind {
        PaymentKind::Pay => format!(
            "the payment of {} in channel {}",
            view.amount, view.channel_id
        ),
        PaymentKind::Open => format!(
            "the open of channel {} (deposit {})",
            view.channel_id, view.amount
        ),
    };
    format!(
        "PENDING (exit code {EXIT_PENDING}): {what} (payment id {id}) is not countersigned by the peer yet.\n{message}\nTo retry, run the same command with --payment-id {id}: it never pays twice. `zerostate channel show {channel}` shows the state still pending.",
        id = view.payment_id,
        message = view.message,
        channel = view.channel_id,
    )
}

async fn reputation(ListArgs { api, page }: ListArgs) -> anyhow::Result<()> {
    print_page(
        &client(&api)?.reputation(page.offset, page.limit).await?,
        "reputation records",
    )
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate must be above 0 and at most 10000 tasks per second"
    );
    let clients: Vec<Client> = if !args.api.is_empty() {
        args.api
            .iter()
            .map(|a| Client::from_address(a, args.token.clone()))
            .collect::<Result<_, _>>()
            .context("invalid --api")?
    } else {
        let dirs = if args.data_dir.is_empty() {
            vec![Config::default().data_dir]
        } else {
            args.data_dir.clone()
        };
        dirs.iter()
            .map(|d| Client::from_data_dir(d, args.token.clone()))
            .collect::<Result<_, _>>()?
    };
    let pow = TaskParams::Pow {
        difficulty: args.difficulty,
        input: None,
    };
    let matmul = TaskParams::Matmul { n: args.n };
    let kinds: Vec<TaskParams> = match args.kind {
        LoadKind::Pow => vec![pow],
        LoadKind::Matmul => vec![matmul],
        LoadKind::Mixed => vec![pow, matmul],
    };
    let make = |i: usize| {
        TaskRequest {
            params: kinds[i % kinds.len()].clone(),
            max_price: None,
            // Both kinds meet both auction types.
            auction_type: Some(if (i / 2).is_multiple_of(2) {
                AuctionType::SecondPrice
            } else {
                AuctionType::FirstPrice
            }),
            reputation_weighted: None,
        }
    };
    make(0).validate().map_err(anyhow::Error::msg)?;
    eprintln!(
        "loading {} node(s) at {}/s for {} s",
        clients.len(),
        args.rate,
        args.duration
    );
    let stats = run_load(
        &clients,
        args.rate,
        Duration::from_secs(args.duration),
        Duration::from_secs(args.drain),
        make,
        |s, t| eprintln!("t={:>4}s {}", t.as_secs(), s.line()),
    )
    .await;
    println!("summary: {}", stats.line());
    anyhow::ensure!(
        stats.failed == 0 && stats.running() == 0 && stats.submitted > 0,
        "{} task(s) failed, {} still running, {} submitted",
        stats.failed,
        stats.running(),
        stats.submitted
    );
    Ok(())
}

/// Installs the node's logger: the filter of `RUST_LOG` when that is set (the convention
/// users expect), else `log.filter`; lines in `log.format`, on stderr.
fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let (filter, from) = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => (f, "the RUST_LOG environment variable"),
        _ => (log.filter.clone(), "log.filter"),
    };
    tracing_subscriber::EnvFilter::try_new(&filter).with_context(|| {
        format!("{from} is `{filter}`, which is not a tracing filter (e.g. info, or zerostate=debug,libp2p=info)")
    })?;
    let logger = tracing_subscriber::fmt()
        .with_env_filter(log_filter(&filter))
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => logger
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => logger.json().init(),
    }
    tracing::debug!(%filter, from, "logging");
    Ok(())
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
