//! tracing set-up: readable text by default, JSON on request; the filter comes from
//! `RUST_LOG`, else the config's `log.level`, else `info`.

use crate::config::log::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn init(level: Option<&str>, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| level.map(str::to_string))
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("log level `{filter}` is invalid ({e}); using info");
        EnvFilter::new("info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Sets up logging (and the open-file limit), then runs `main` on a multi-threaded runtime
/// with `threads` worker threads (`None`: one per core, or `TOKIO_WORKER_THREADS`); on an
/// error (or a runtime that cannot start) prints it prefixed by `program` and exits with
/// `code` (tunneld: 1; tunnelc: 2, a failure retrying cannot fix; transient ones it retries
/// itself). Both binaries' `main` end here.
pub fn run_main_exiting<F>(
    program: &str,
    level: Option<&str>,
    format: LogFormat,
    threads: Option<usize>,
    main: F,
    code: i32,
) where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    init(level, format);
    // Before any socket: each visitor, session and local connection holds a descriptor.
    match tunneld_core::fd_limit::report(program, tunneld_core::fd_limit::raise()) {
        Ok(line) => tracing::info!("{line}"),
        Err(line) => tracing::warn!("{line}"),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!("runtime worker threads: {}", rt.metrics().num_workers());
    if let Err(e) = rt.block_on(main) {
        eprintln!("{program}: {e:#}");
        std::process::exit(code);
    }
}
