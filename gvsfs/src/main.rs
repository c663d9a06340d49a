//! `gvsfs`: the grid's node storage daemon: the /gvs FUSE mount and the chunk store.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// gvsfs: the grid's node storage daemon: the /gvs FUSE mount and the chunk store
#[derive(Parser)]
#[command(name = "gvsfs", version, about = "gvsfs: the grid's node storage daemon: the /gvs FUSE mount and the chunk store", long_about = None)]
struct Cli {
    /// metad members (host:port, comma separated).
    #[arg(
        long,
        env = "METAD_ENDPOINTS",
        value_delimiter = ',',
        global = true,
        default_value = "127.0.0.1:2380"
    )]
    endpoints: Vec<String>,
    /// The cluster secret (hex).
    #[arg(
        long,
        env = "METAD_SECRET_FILE",
        global = true,
        default_value = "/etc/grid/secret"
    )]
    secret_file: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the global volume store and serve this node's chunks, in the
    /// foreground until unmounted or sent SIGTERM/SIGINT.
    Mount(gvsfs::daemon::MountArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Mount(args) => gvsfs::daemon::run(args, cli.endpoints, &cli.secret_file),
    };
    if let Err(e) = r {
        eprintln!("gvsfs: {e:#}");
        std::process::exit(1);
    }
}
