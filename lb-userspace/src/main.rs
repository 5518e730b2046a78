//! `lb`: the load balancer's one binary. A thin layer over the `lb` library: parse the command
//! line, set up logging, call the library, print, and turn errors into a message and a
//! non-zero exit status.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
#[cfg(feature = "lab")]
use lb::cli::BenchCommand;
use lb::cli::{Cli, Command, DecapCommand, NodeCommand, OptionError, SOCKET_ENV, render};

/// The proxy allocates and frees small blocks for every request (header maps, buffers,
/// futures); mimalloc's per-thread free lists do that in fewer instructions than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter without `RUST_LOG`: info, but rustls only at error: it warns of a peer's
/// protocol slips (an IP address as SNI, as wrk sends) once per connection, which any client
/// could turn into a flood of log lines.
const DEFAULT_LOG: &str = "info,rustls=error";

/// `error` and its causes, each cause only if the error it caused does not already say it
/// (many errors here end with their cause's text).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    let mut parent = text.clone();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !parent.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        parent = cause;
    }
    text
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `--version` says the commit and the eBPF objects' digests too (made once, at start).
    let long_version: &'static str = Box::leak(lb::version::long().into_boxed_str());
    let matches = Cli::command().long_version(long_version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lb: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let local = match &cli.command {
        Command::Decap(_) => Some("decap"),
        #[cfg(feature = "lab")]
        Command::Bench(_) => Some("bench"),
        #[cfg(feature = "lab")]
        Command::Demo => Some("demo"),
        Command::StickyKey => Some("sticky-key"),
        Command::TicketKey => Some("ticket-key"),
        Command::Completions { .. } => Some("completions"),
        Command::Man { .. } => Some("man"),
        _ => None,
    };
    if let Some(command) = local {
        cli.refuse_daemon_options(command)?;
    }
    match cli.command {
        Command::Run { take_over } => {
            let (path, config) = config_of(&cli, "run")?;
            // The L7 listeners run on it: a worker per CPU, or one thread (`daemon::scheduler`).
            let scheduler = lb::daemon::scheduler::Scheduler::of_this_process()?;
            tracing::info!(runtime = %scheduler, "the async runtime");
            scheduler
                .start()?
                .block_on(lb::daemon::run(config, path, take_over))?;
        }
        Command::Check => {
            let (path, config) = config_of(&cli, "check")?;
            let certificates = lb::l7::check_files(&config)?;
            if let Some(group) = &config.control.read_only_group {
                lb::control::peer::resolve_group(group)
                    .map_err(lb::control::server::ServerError::from)?;
            }
            println!(
                "{}: ok ({} listeners, {} pools)",
                path.display(),
                config.listeners.len(),
                config.pools.len()
            );
            for line in certificates {
                println!("  certificates of {line}");
            }
        }
        Command::Completions { shell } => {
            // Made in memory (the generator panics on a failed write), then written.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")?;
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let pages = lb::cli::man_pages(&Cli::command().long_version(lb::version::long()))
                .context("rendering the manual pages")?;
            for (name, page) in &pages {
                let path = dir.join(name);
                std::fs::write(&path, page)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{} manual pages in {}", pages.len(), dir.display());
        }
        Command::Uninstall => {
            let (_, config) = config_of(&cli, "uninstall")?;
            print!("{}", lb::daemon::uninstall(&config)?);
        }
        Command::Decap(DecapCommand::Attach { target, vips, mode }) => {
            print!(
                "{}",
                lb::cli::decap::attach_decap(&target.iface, mode, &vips, &target.pin_dir)?
            );
        }
        Command::Decap(DecapCommand::Detach { target }) => {
            print!(
                "{}",
                lb::cli::decap::detach_decap(&target.iface, &target.pin_dir)?
            );
        }
        Command::Decap(DecapCommand::Status { target }) => {
            let status = lb::cli::decap::decap_status(&target.iface, &target.pin_dir)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render::decap_status(&status));
            }
        }
        #[cfg(feature = "lab")]
        Command::Bench(command) => run_bench(command, cli.json)?,
        #[cfg(feature = "lab")]
        Command::Demo => lb::demo::run()?,
        Command::StickyKey => println!("{}", lb::l7::sticky::KeyRing::generate_line()?),
        Command::TicketKey => println!(
            "{}",
            lb::l7::key_file::generate_line()
                .context("the system's random number generator failed")?
        ),
        Command::Capture(ref args) => {
            let socket = daemon_socket(&cli)?;
            let summary = lb::cli::capture::run(&socket, args.spec(), &args.file)?;
            eprintln!(
                "lb capture: {}",
                lb::cli::capture::describe(&summary, &args.file)
            );
        }
        Command::Node(NodeCommand::Drain { .. }) => {
            let request = cli.command.request()?.context("a daemon command")?;
            let socket = daemon_socket(&cli)?;
            let body = lb::control::client::call(&socket, &request)?;
            // The withdrawal is done; the routers take a moment to move new flows away.
            if let lb::control::Body::Node(change) = &body {
                if !cli.json {
                    eprintln!(
                        "withdrew {} address(es); waiting {} ms for the routers",
                        change.changed.len(),
                        change.wait_ms
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(change.wait_ms));
            }
            print!("{}", render::render(&body, cli.json));
        }
        ref daemon_command => {
            let request = daemon_command
                .request()?
                .context("this command is not one the daemon answers")?;
            let body = lb::control::client::call(&daemon_socket(&cli)?, &request)?;
            print!("{}", render::render(&body, cli.json));
        }
    }
    Ok(())
}

/// `lb bench ...` (the `lab` feature): runs a benchmark and prints its report, and its charts'
/// paths with `--svg`.
#[cfg(feature = "lab")]
fn run_bench(command: BenchCommand, json: bool) -> anyhow::Result<()> {
    match command {
        BenchCommand::Xdp {
            rounds,
            calls,
            frames,
            flows,
            svg,
        } => {
            let options = lb::bench::xdp::Options {
                rounds,
                calls,
                frames,
                flows,
            };
            let report = lb::bench::xdp::run(options).context("the XDP benchmark failed")?;
            println!("{report}");
            if let Some(dir) = svg {
                for chart in report.write_charts(&dir)? {
                    println!("chart: {}", chart.display());
                }
            }
        }
        BenchCommand::L7 {
            rounds,
            duration,
            warmup,
            connections,
            idle,
            no_http2,
            base,
            svg,
        } => {
            let base = base
                .map(|path| {
                    std::fs::canonicalize(&path)
                        .ok()
                        .filter(|p| p.is_file())
                        .ok_or_else(|| anyhow::anyhow!("--base {}: no such file", path.display()))
                })
                .transpose()?;
            let options = lb::bench::l7::Options {
                rounds,
                duration,
                warmup,
                connections: usize::try_from(connections).context("--connections")?,
                idle: usize::try_from(idle).context("--idle")?,
                http2: !no_http2,
            };
            let report =
                lb::bench::l7::run(options, base.as_deref()).context("the L7 benchmark failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            if let Some(dir) = svg {
                for chart in report.write_charts(&dir)? {
                    eprintln!("chart: {}", chart.display());
                }
            }
        }
        BenchCommand::Scale { rounds, window } => {
            let options = lb::bench::scale::Options { rounds, window };
            let report = lb::bench::scale::run(options).context("the scale benchmark failed")?;
            println!("{report}");
        }
        BenchCommand::L7Backend { listen, cert, key } => {
            let tls = cert.as_deref().zip(key.as_deref());
            lb::bench::l7::backend::serve(listen, tls).context("the benchmark's backend failed")?;
        }
    }
    Ok(())
}

/// The configuration file of `lb run`, `check` or `uninstall`, read; a `--socket` that is not
/// where that daemon listens is refused (it would do nothing).
fn config_of(cli: &Cli, command: &'static str) -> anyhow::Result<(PathBuf, lb::config::Config)> {
    let path = cli.config.clone().ok_or(OptionError::NoConfig(command))?;
    let config = lb::config::Config::from_file(&path)?;
    if let Some(given) = &cli.socket
        && *given != config.control.socket
    {
        return Err(OptionError::SocketNotConfigured {
            given: given.display().to_string(),
            configured: config.control.socket.display().to_string(),
        }
        .into());
    }
    Ok((path, config))
}

/// Where a daemon command finds the daemon: `--socket`, else `LB_SOCKET`, else the
/// `[control] socket` of `--config`, else the default.
fn daemon_socket(cli: &Cli) -> anyhow::Result<PathBuf> {
    let configured = match &cli.config {
        Some(path) => Some(lb::config::Config::from_file(path)?.control.socket),
        None => None,
    };
    if let (Some(given), Some(configured)) = (&cli.socket, &configured)
        && given != configured
    {
        return Err(OptionError::SocketsDiffer {
            given: given.display().to_string(),
            configured: configured.display().to_string(),
        }
        .into());
    }
    let from_env = std::env::var_os(SOCKET_ENV)
        .filter(|_| configured.is_none())
        .map(PathBuf::from);
    Ok(cli
        .socket
        .clone()
        .or(from_env)
        .or(configured)
        .unwrap_or_else(|| PathBuf::from(lb::control::DEFAULT_SOCKET)))
}
