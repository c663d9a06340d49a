//! `gvsfs`: the grid's node storage daemon: the /gvs FUSE mount and the chunk store.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// gvsfs: the grid's node storage daemon: the /gvs FUSE mount and the chunk store
#[derive(Parser)]
#[command(name = "gvsfs", version, about = "gvsfs: the grid's node storage daemon: the /gvs FUSE mount and the chunk store", long_about = None)]
struct Cli {
    #[command(flatten)]
    metad: metad::MetadArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the global volume store and serve this node's chunks, in the
    /// foreground until unmounted or sent SIGTERM/SIGINT.
    Mount(gvsfs::daemon::MountArgs),
    /// Make DST a copy-on-write clone of the volume SRC, in constant time
    /// (both under the same /gvs mount; SRC may be in a snapshot). Uses the
    /// GVS_IOC_CLONE ioctl on SRC. Exit status 0 on success, 1 on error.
    Clone {
        /// The volume to clone.
        src: PathBuf,
        /// The new volume (or an existing directory to clone into).
        dst: PathBuf,
        /// Replace DST if it exists.
        #[arg(short, long)]
        force: bool,
    },
    /// Write the raw contents of the volume VOL to FILE (or stdout),
    /// reading only its data extents (SEEK_DATA/SEEK_HOLE). FILE is left
    /// sparse where VOL is; a pipe gets zeros for the holes. A progress
    /// bar is drawn on stderr when it is a terminal.
    Export {
        /// The volume (a file under /gvs, a snapshot's too).
        vol: PathBuf,
        /// The output file (created or truncated); stdout if not given.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Create the volume VOL under /gvs from the raw image FILE, writing
    /// only FILE's data extents, then set its size and fsync it. Other
    /// image formats: `qemu-img convert -O raw IMAGE /gvs/...`.
    Import {
        /// The raw image.
        file: PathBuf,
        /// The new volume (under /gvs).
        vol: PathBuf,
        /// Replace VOL if it exists.
        #[arg(short, long)]
        force: bool,
    },
    /// Restore every volume below DIR to its state in the snapshot
    /// DIR/.snapshots/SNAPSHOT, by cloning each one back in place (no data
    /// is copied; directories missing from DIR are recreated). Volumes
    /// created after the snapshot are kept unless --prune is given. One
    /// metad transaction: all of it happens, or (on error) none of it.
    Rollback {
        /// The directory the snapshot was taken of.
        dir: PathBuf,
        /// The snapshot's name (in DIR/.snapshots/).
        snapshot: String,
        /// Also remove volumes and directories the snapshot does not have.
        #[arg(long)]
        prune: bool,
    },
    /// Move mirrors off nodes fuller than the rest, throttled (see
    /// `gvsfs rebalance start --help`); every node's gvsfs does the work.
    Rebalance {
        #[command(subcommand)]
        action: gvsfs::rebalance::Action,
        /// The gvs mount to act through.
        #[arg(long, global = true, default_value = "/gvs")]
        mountpoint: PathBuf,
    },
}

fn main() {
    metad::logging::init();
    metad::limits::raise_nofile_limit_or_warn();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Mount(args) => gvsfs::daemon::run(args, &cli.metad),
        Cmd::Clone { src, dst, force } => gvsfs::clone::clone_path(&src, &dst, force),
        Cmd::Export { vol, output } => gvsfs::backup::export(&vol, output.as_deref()).map(|_| ()),
        Cmd::Import { file, vol, force } => gvsfs::backup::import(&file, &vol, force).map(|_| ()),
        Cmd::Rebalance { action, mountpoint } => gvsfs::rebalance::command(&mountpoint, &action),
        Cmd::Rollback {
            dir,
            snapshot,
            prune,
        } => gvsfs::rollback::refuse_if_vms_use(&dir, &cli.metad)
            .and_then(|()| gvsfs::rollback::rollback(&dir, &snapshot, prune))
            .map(|r| {
            println!(
                "{}: {} volumes restored from {snapshot}, {} directories recreated, {} entries pruned",
                dir.display(),
                r.restored,
                r.dirs_created,
                r.pruned
            )
        }),
    };
    if let Err(e) = r {
        eprintln!("gvsfs: {e:#}");
        std::process::exit(1);
    }
}
