//! The daemon's life: connect to metad, serve the chunk store, register
//! the node (with a TTL lease that write leases hang on), mount, follow
//! the namespace, and on SIGTERM commit what is buffered and unmount.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};
use metad::{Client, MetadArgs};

use crate::chunk::ChunkStore;
use crate::fs::{on_event, run_invalidations, GvsFs};
use crate::gvs::{Gvs, NODE_TTL};
use crate::meta::{self, NodeInfo};
use crate::volume::VolumeSlot;

/// `gvsfs mount` options.
#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Where to mount the global volume store.
    #[arg(long, default_value = "/gvs")]
    pub mountpoint: PathBuf,
    /// The node's persistent data (the chunk store is DIR/chunks).
    #[arg(long, default_value = "/var/lib/grid/gvsfs")]
    pub data_dir: PathBuf,
    /// Where the chunk server listens.
    #[arg(long, default_value = "0.0.0.0:2390")]
    pub listen: String,
    /// The address other nodes reach the chunk server at (default: HOSTNAME:PORT).
    #[arg(long)]
    pub advertise: Option<String>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Size of the chunk cache in MiB (default: an eighth of the node's
    /// memory). It is what serves a file read again: the kernel drops its
    /// pages of a file when another node changes it, and when a reader
    /// asks (fio does).
    #[arg(long)]
    pub cache_mb: Option<usize>,
    /// Size of the chunk store's cache in MiB: deltas, and the whole
    /// chunks a mirror lately stored from small puts, to rebuild deltas
    /// from.
    #[arg(long, default_value_t = 512)]
    pub store_cache_mb: usize,
    /// FUSE worker threads. 8 (on 2 cores): 4 K random reads at queue
    /// depth 16 went from 25-29 K to 33-41 K IOPS; 16 did no better.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Use the kernel's writeback cache (writes are gathered in the page
    /// cache and reach gvsfs at fsync, close, or when the kernel flushes).
    /// Off by default: in that mode the kernel keeps its own idea of a
    /// file's size and times, so changes made on other nodes would not show.
    #[arg(long, env = "GVSFS_WRITEBACK", default_value_t = false)]
    pub writeback: bool,
    /// Commit buffered writes in the background this often (milliseconds;
    /// 0: only at fsync, close and when the buffer is full), so that other
    /// nodes see data written here without waiting for an fsync.
    #[arg(long, env = "GVSFS_COMMIT_MS", default_value_t = 1000)]
    pub commit_ms: u64,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// An eighth of the node's memory in MiB (at least 64): the chunk
/// cache's default size, as ZFS's ARC and Ceph's OSD caches take a share
/// of memory rather than a fixed size.
fn default_cache_mb() -> usize {
    // SAFETY: sysinfo fills the struct it is given.
    let total = unsafe {
        let mut si: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut si) != 0 {
            0
        } else {
            si.totalram as u64 * u64::from(si.mem_unit)
        }
    };
    ((total >> 20) as usize / 8).max(64)
}

/// Capacity and free bytes of the file system holding `dir`.
fn capacity(dir: &Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs fills the struct it is given; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return (0, 0);
        }
        (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)
    }
}

async fn register(gvs: &Gvs, info: &NodeInfo) -> anyhow::Result<u64> {
    let asked = Instant::now();
    let lease = gvs.client().lease_grant(NODE_TTL).await?;
    gvs.client()
        .put_with_lease(meta::node_key(&gvs.me), info.encode(), lease)
        .await?;
    gvs.node_lease.store(lease, Ordering::SeqCst);
    gvs.lease_confirmed(asked);
    Ok(lease)
}

/// Keeps the node's lease alive and its registration current.
async fn keep_registered(gvs: Arc<Gvs>, data_dir: PathBuf, addr: String) {
    let mut last_free = None;
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (cap, free) = capacity(&data_dir);
        let info = NodeInfo {
            addr: addr.clone(),
            capacity: cap,
            free,
        };
        let lease = gvs.lease();
        let asked = Instant::now();
        match gvs.client().lease_keepalive(lease).await {
            Ok(_) => {
                gvs.lease_confirmed(asked);
                // Refresh the free space when it moved by 64 MiB (each
                // write is an event on every node), so df follows writes
                // and collections.
                let changed = last_free.is_none_or(|l: u64| l.abs_diff(free) > 64 << 20);
                if changed
                    && gvs
                        .client()
                        .put_with_lease(meta::node_key(&gvs.me), info.encode(), lease)
                        .await
                        .is_ok()
                {
                    last_free = Some(free);
                }
            }
            Err(e) => {
                gvs.metad_trouble(&e);
                tracing::warn!("node lease {lease} lost ({e}); registering again");
                match register(&gvs, &info).await {
                    Ok(l) => tracing::info!("registered again with lease {l}"),
                    Err(e) => tracing::warn!("registering: {e}"),
                }
            }
        }
    }
}

fn unmount_stale(mountpoint: &Path) {
    if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
        // SAFETY: a plain syscall on a valid C string; failing (nothing
        // mounted there) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Commits every volume with buffered writes, every `every`: what a
/// writer that never calls fsync has written reaches the mirrors and
/// becomes visible to other nodes within about that long. In between,
/// commits the volumes writers ask for (`asks`, see
/// [`crate::volume::COMMIT_AHEAD`]).
fn background_commits(gvs: &Gvs, every: Duration, asks: mpsc::Receiver<u64>) {
    let commit = |v: &VolumeSlot| {
        let due = {
            let v = v.lock().unwrap_or_else(|e| e.into_inner());
            v.leased() && v.is_dirty()
        };
        if due {
            if let Err(e) = v.commit(gvs, None) {
                tracing::warn!("background commit: {e}");
            }
        }
    };
    let mut next = Instant::now() + every;
    loop {
        match asks.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(ino) => {
                if let Some(v) = gvs.volume_if_any(ino) {
                    commit(&v);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // A writer that keeps asking does not hold off the others' rounds.
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + every;
        let vols: Vec<_> = gvs
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for v in vols {
            commit(&v);
        }
    }
}

/// Tells glibc's allocator to keep the memory the daemon frees: the write
/// path allocates and frees a block buffer per written block, and with
/// glibc's defaults freed heap tops go back to the kernel and come back as
/// page faults (a tenth of a sequential writer's CPU in perf). With these,
/// 1 GiB sequential writes went from 238 to 267 MiB/s (mean of three
/// alternating runs each). The cost: the daemon keeps its peak heap.
fn keep_freed_memory() {
    const KEEP: [(libc::c_int, libc::c_int); 3] = [
        (libc::M_MMAP_THRESHOLD, 32 << 20),
        (libc::M_TRIM_THRESHOLD, 1 << 30),
        (libc::M_TOP_PAD, 256 << 20),
    ];
    for (param, value) in KEEP {
        // SAFETY: mallopt only sets allocator tunables; it is called
        // before the daemon starts any thread.
        if unsafe { libc::mallopt(param, value) } != 1 {
            tracing::warn!("mallopt({param}, {value}) refused");
        }
    }
}

/// Runs `gvsfs mount` until unmounted or signalled.
pub fn run(args: MountArgs, metad: &MetadArgs) -> anyhow::Result<()> {
    keep_freed_memory();
    let cfg = metad
        .client_config()
        .with_context(|| format!("reading the cluster secret {}", metad.secret_file.display()))?;
    let secret = cfg.secret.clone();
    let me = args.node_name.clone().unwrap_or_else(hostname);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let store = ChunkStore::open(&args.data_dir.join("chunks"), args.store_cache_mb << 20)
        .context("opening the chunk store")?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("listening on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{me}:{port}"));
    rt.spawn(crate::net::serve(
        listener,
        store.clone(),
        secret.clone(),
        metad::server::MAX_CONNECTIONS,
    ));

    let client = Arc::new(Client::new(cfg));
    let cache_mb = args.cache_mb.unwrap_or_else(default_cache_mb);
    let cache_chunks = (cache_mb << 20) / crate::DEFAULT_BLOCK_SIZE as usize;
    let gvs = Arc::new(Gvs::new(
        me.clone(),
        client,
        store,
        crate::net::Peers::new(secret),
        cache_chunks,
        rt.handle().clone(),
    ));

    // metad may be starting beside us: wait for it.
    let (cap, free) = capacity(&args.data_dir);
    let info = NodeInfo {
        addr: advertise.clone(),
        capacity: cap,
        free,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = rt.block_on(async {
            gvs.init_root().await?;
            register(&gvs, &info).await?;
            let (kvs, rev) = gvs.client().get_prefix(meta::PREFIX).await?;
            gvs.mirror.reset(kvs, rev);
            anyhow::Ok(())
        });
        match r {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::info!("waiting for metad: {e:#}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.context("metad unreachable")),
        }
    }
    tracing::info!("node {me} registered, chunk server at {advertise}");
    rt.spawn(keep_registered(
        gvs.clone(),
        args.data_dir.clone(),
        advertise,
    ));

    // A predecessor killed without unmounting leaves a dead mount behind.
    unmount_stale(&args.mountpoint);
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("creating {}", args.mountpoint.display()))?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("gvs".into()),
        MountOption::Subtype("gvsfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let fs = match vmctl::store::Store::connect(metad.endpoints.clone(), &metad.secret_file) {
        Ok(store) => GvsFs::new(gvs.clone(), args.writeback)
            .with_grid(crate::control::Grid::new(store, rt.handle().clone())),
        Err(e) => {
            tracing::warn!("no control files under /gvs/.grid: {e}");
            GvsFs::new(gvs.clone(), args.writeback)
        }
    };
    let session = fuser::Session::new(fs, &args.mountpoint, &config)
        .with_context(|| format!("mounting {}", args.mountpoint.display()))?;
    let (tx, rx) = mpsc::channel();
    let notifier = session.notifier();
    std::thread::spawn(move || run_invalidations(notifier, rx));
    *gvs.inval.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    {
        let gvs2 = gvs.clone();
        let mirror = gvs.mirror.clone();
        rt.spawn(async move {
            let gvs3 = gvs2.clone();
            let cb = move |e: &metad::Event| on_event(&gvs3, e);
            loop {
                // Follow with the current client, until it is replaced.
                let (client, gen) = (gvs2.client(), gvs2.client_gen());
                let replaced = || gvs2.client_gen() != gen;
                if let Err(e) = crate::mirror::follow(&client, &mirror, &cb, &replaced).await {
                    tracing::warn!("following gvs/: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    if args.commit_ms > 0 {
        let gvs = gvs.clone();
        let every = Duration::from_millis(args.commit_ms);
        let (tx, asks) = mpsc::channel();
        *gvs.commit_asks.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        std::thread::spawn(move || background_commits(&gvs, every, asks));
    }
    {
        let (g1, g2, g3, g4) = (gvs.clone(), gvs.clone(), gvs.clone(), gvs.clone());
        std::thread::spawn(move || crate::gc::run(g1));
        std::thread::spawn(move || crate::scrub::run(g2));
        std::thread::spawn(move || crate::repair::run(g3));
        std::thread::spawn(move || crate::remirror::run(g4));
        let g5 = gvs.clone();
        std::thread::spawn(move || crate::rebalance::run(g5));
    }
    let bg = session.spawn()?;
    tracing::info!("mounted {}", args.mountpoint.display());

    let signalled = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = term.recv() => return std::io::Result::Ok(true),
                _ = int.recv() => return Ok(true),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if bg.guard.is_finished() { return Ok(false); }
                }
            }
        }
    })?;
    if signalled {
        tracing::info!("stopping: committing buffered data and unmounting");
    }
    let vols: Vec<_> = gvs
        .volumes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for v in vols {
        if let Err(e) = v.commit(&gvs, None) {
            tracing::warn!("commit at shutdown: {e}");
        }
    }
    if let Err(e) = bg.umount_and_join() {
        tracing::warn!("unmount: {e}");
    }
    let _ = rt.block_on(gvs.client().lease_revoke(gvs.lease()));
    Ok(())
}
