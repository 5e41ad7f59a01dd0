//! The `cairn` binary: parses arguments and hands over to the library.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cairn::cli::{run_client, Cli, Command, ServeArgs};
use cairn::config::{Config, ConfigOverrides, LogFormat};

/// mimalloc rather than glibc's malloc: events are decoded on one thread and
/// dropped on another (replay, the writer and the indexer, HTTP reads), and
/// glibc's arenas made that a third of a replay's time (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_default_sigpipe();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => match serve(args).await {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    1
                }
            },
            command => match run_client(&cli.global, command).await {
                Ok(()) => 0,
                Err(failure) => {
                    eprintln!("error: {}", failure.message());
                    failure.exit_code()
                }
            },
        }
    });
    std::process::exit(code);
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(
        args.config.as_deref(),
        ConfigOverrides {
            listen: args.listen,
            data_dir: args.data_dir,
            log_format: args.log_format,
        },
    )?;
    init_tracing(config.log_format);
    let grace = std::time::Duration::from_secs(config.shutdown_timeout_seconds);
    let shutdown = CancellationToken::new();
    let daemon = cairn::daemon::start(config, shutdown.clone()).await?;
    // Scripts and tests read this line to learn the port.
    println!("cairn listening on http://{}", daemon.addr);
    tracing::info!(addr = %daemon.addr, "listening");
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    shutdown.cancel();
    let mut finished = daemon.finished;
    // Every acknowledged event is already on disk, so leaving early loses
    // only requests that were never answered.
    tokio::select! {
        result = &mut finished => result?,
        () = wait_for_signal() => {
            tracing::warn!("second signal: exiting without waiting for in-flight requests");
            std::process::exit(130);
        }
        () = tokio::time::sleep(grace) => {
            tracing::error!(seconds = grace.as_secs(), "in-flight requests did not finish in time; exiting");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// Lets a client command end quietly when its output is cut short, as in
/// `cairn events | head`: Rust ignores SIGPIPE, so printing would panic with
/// "Broken pipe" instead. Only for client commands: the daemon keeps ignoring
/// it, so a client that hangs up never kills it.
fn restore_default_sigpipe() {
    // SAFETY: called before the command starts any work of its own; setting a
    // signal disposition to its default has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
