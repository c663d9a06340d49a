//! `gvsfs`: the grid's node storage daemon: the /gvs FUSE mount and the chunk store.

use std::path::{Path, PathBuf};

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
        Cmd::Clone { src, dst, force } => clone(&src, &dst, force),
    };
    if let Err(e) = r {
        eprintln!("gvsfs: {e:#}");
        std::process::exit(1);
    }
}

/// `gvsfs clone`: the clone ioctl on SRC, naming DST by its directory's
/// inode number and its name.
fn clone(src: &Path, dst: &Path, force: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    let f = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut dst = dst.to_path_buf();
    if dst.is_dir() {
        let name = src
            .file_name()
            .with_context(|| format!("{} has no file name", src.display()))?;
        dst.push(name);
    }
    let name = dst
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: the destination needs a UTF-8 file name", dst.display()))?
        .to_string();
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pmeta =
        std::fs::metadata(&parent).with_context(|| format!("reading {}", parent.display()))?;
    if pmeta.dev() != f.metadata()?.dev() {
        anyhow::bail!(
            "{} and {} are not on the same gvs mount",
            src.display(),
            dst.display()
        );
    }
    let arg = gvsfs::clone::CloneArg {
        dst_parent: pmeta.ino(),
        flags: if force {
            gvsfs::clone::GVS_CLONE_REPLACE
        } else {
            0
        },
        name,
    }
    .encode()?;
    // SAFETY: the request number encodes the struct's size, and `arg`
    // is exactly that many bytes, alive for the call.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            gvsfs::clone::GVS_IOC_CLONE as libc::Ioctl,
            arg.as_ptr(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EEXIST) => " (use --force to replace it)",
            Some(libc::ENOTTY) => " (not a gvs volume)",
            _ => "",
        };
        anyhow::bail!("cloning {} to {}: {e}{hint}", src.display(), dst.display());
    }
    Ok(())
}
