//! `xmpp-cm --config FILE [--check-config]`: load the layered configuration (exit 64 with a
//! one-line reason when it is bad), set up logging, bind, serve until SIGTERM, drain, exit 0.
//! `xmpp-cm check DOMAIN | --front [--json]`: `xmpp_cm::check` (exit 0, 1, or 64).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "XMPP connection manager: BOSH and WebSocket in front of any XMPP server")]
struct Cli {
    /// TOML configuration file; built-in defaults apply without it. Environment variables
    /// XMPP_CM_<SECTION>__<KEY> override both.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 ok, 64 bad).
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Walk the path a session to DOMAIN would take (route, SSRF guard, TCP, PROXY header,
    /// stream, STARTTLS/TLS, certificate, features), one line per step, then a verdict.
    /// Exit 0: a session would work; 1: it would not; 64: bad configuration.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// The XMPP domain to check (as a client would ask for it).
    #[arg(required_unless_present = "front")]
    domain: Option<String>,
    /// Check the public side instead (or as well): [http.tls] certificate files, names,
    /// expiry, key match, http.public_url, and the per-IP limits behind a proxy.
    #[arg(long)]
    front: bool,
    /// Print one JSON document (steps with name, ok, warning, ms, detail; verdict; exit).
    #[arg(long)]
    json: bool,
}

/// mimalloc: the relay's hot paths allocate many small, short-lived buffers (parsed stanzas,
/// response bodies) from several worker threads; glibc malloc spent ~14% of the BOSH flood's
/// CPU in malloc/free/consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep idle memory where glibc had it: commit arena memory only when used
/// (`arena_eager_commit` 0; without it an idle BOSH session measured ~87 KiB instead of ~66 KiB
/// in the hyper days). Freed pages go back to the OS 10 ms after they empty (`purge_delay` 10,
/// mimalloc's own default): with 0, a BOSH request's short-lived allocations emptied a page at
/// the end of every request once idle sessions' long-lived objects shared its size classes, so
/// each request faulted a fresh page back in (8,000 page faults per 8 s of pingpong with 6,000
/// idle BOSH sessions, against 800 with 10; xmpp-cm's CPU per message +20–25 % with the idle
/// sessions instead of +8–17 %), while idle RSS is the same either way (15.3 KiB per BOSH
/// session at 6,000, 9.9 per WebSocket session at 9,000; bench/findings.md). The numbers are
/// the `mi_option_e` values of the mimalloc v3 that libmimalloc-sys 0.1.49 vendors (the Rust
/// bindings do not name them). An operator's `MIMALLOC_PURGE_DELAY` /
/// `MIMALLOC_ARENA_EAGER_COMMIT` environment variable wins over these defaults.
fn tune_allocator() {
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    for (option, env, value) in [(MI_OPTION_ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0), (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 10)] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mi_option_set only stores an option value; both indices exist in this mimalloc.
            unsafe { mi_option_set(option, value) };
        }
    }
}

const EX_CONFIG: i32 = 64;

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    if let Some(Command::Check(args)) = cli.command {
        let opts = xmpp_cm::check::Options { config_file: cli.config, domain: args.domain, front: args.front, json: args.json };
        std::process::exit(xmpp_cm::check::run(&opts));
    }
    let config = match xmpp_cm::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xmpp-cm: bad configuration: {e}");
            std::process::exit(EX_CONFIG);
        }
    };
    if cli.check_config {
        // Also build what startup builds from config (the CA file must parse).
        if let Err(e) = xmpp_cm::upstream::Upstream::new(Arc::new(config.clone())) {
            eprintln!("xmpp-cm: bad configuration: {e}");
            std::process::exit(EX_CONFIG);
        }
        if config.cluster.enabled() {
            println!("clustering on: advertise {}, internal listener {}", config.cluster.advertise, config.cluster.listen);
        }
        println!("configuration ok");
        return;
    }
    init_logging(&config.log);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xmpp-cm: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(config, cli.config.clone())) {
        eprintln!("xmpp-cm: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: xmpp_cm::Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let state = match xmpp_cm::server::AppState::new(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xmpp-cm: bad configuration: {e}");
            std::process::exit(EX_CONFIG);
        }
    };
    let listeners = xmpp_cm::server::bind(&config).await?;
    xmpp_cm::shutdown::on_signals(state.shutdown.clone());
    if let Some(path) = file {
        // SIGHUP and changes of the file: the whole configuration, live (xmpp_cm::reload).
        xmpp_cm::reload::watch(state.clone(), path);
    }
    xmpp_cm::server::serve(listeners, state).await?;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(log: &xmpp_cm::config::Log) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG, when set, wins over `[log] level`, at startup and on every reload.
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    macro_rules! install {
        ($builder:expr) => {{
            let b = $builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            if !from_env {
                xmpp_cm::reload::set_log_level_hook(Box::new(move |level| {
                    let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }};
    }
    if log.format == "json" {
        install!(b.json());
    } else {
        install!(b);
    }
}
