//! The log format every grid binary uses: `tracing` events filtered by
//! `RUST_LOG` (default `info`), on stderr so that a command's stdout stays
//! its output (`gvsfs export` to stdout, `--json` listings).

/// Installs the grid's log subscriber; call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
