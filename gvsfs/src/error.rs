//! The errors of gvsfs, and the errno each one becomes at the FUSE boundary.

use fuser::Errno;

/// Everything that can go wrong inside gvsfs; one variant per cause, so
/// that the FUSE layer can answer with the right errno and the log says why.
#[derive(Debug, thiserror::Error)]
pub enum GvsError {
    /// The name or inode does not exist.
    #[error("not found")]
    NotFound,
    /// The name exists already.
    #[error("exists")]
    Exists,
    /// A directory is not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// A directory was given where a file was expected.
    #[error("is a directory")]
    IsDir,
    /// A file was given where a directory was expected.
    #[error("not a directory")]
    NotDir,
    /// The argument is invalid (the reason says which).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The operation is not supported by a volume store (the reason says why).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The write lease was taken by another node: this writer is fenced.
    #[error("fenced: the write lease of volume {0:#x} moved to another node")]
    Fenced(u64),
    /// This node took a volume's write lease but its view of metad has
    /// not reached the lease's revision: it cannot tell the latest
    /// committed root, so it writes nothing rather than write on an
    /// older one.
    #[error(
        "volume {ino:#x}: this node's view of metad lags behind its write lease (revision {rev})"
    )]
    ViewLags {
        /// The volume.
        ino: u64,
        /// The lease's revision.
        rev: u64,
    },
    /// A commit's writes started from a root that is no longer the
    /// volume's committed one: committing them would drop a newer commit.
    #[error("volume {0:#x}: another root was committed since this node's writes began")]
    StaleBase(u64),
    /// Fewer mirrors took a commit than the volume's `gvs.min_copies`.
    #[error("volume {ino:#x}: {copies} copies of the commit, gvs.min_copies asks for {wanted}")]
    TooFewCopies {
        /// The volume.
        ino: u64,
        /// The mirrors that took it.
        copies: u32,
        /// What `gvs.min_copies` asks for.
        wanted: u32,
    },
    /// A snapshot is read-only.
    #[error("read-only: snapshots cannot be changed")]
    ReadOnly,
    /// No permission.
    #[error("permission denied")]
    Denied,
    /// Past the maximum volume size.
    #[error("file too large")]
    TooLarge,
    /// No such attribute.
    #[error("no such attribute")]
    NoAttr,
    /// A name longer than a directory entry holds (255 bytes).
    #[error("name too long: {0} bytes, at most 255")]
    NameTooLong(usize),
    /// An attribute value longer than Linux allows one (XATTR_SIZE_MAX).
    #[error("attribute value too long: {0}")]
    ValueTooLong(String),
    /// A file's attributes would pass what its inode record may hold.
    #[error("no space: {0}")]
    NoSpace(String),
    /// A concurrent change won a compare-and-swap and retries ran out.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No replica holds a chunk, or a replica answered with bad data.
    #[error("chunk {0} unavailable on every replica")]
    ChunkUnavailable(String),
    /// The metadata service failed.
    #[error("metad: {0}")]
    Meta(#[from] metad::ClientError),
    /// The local chunk store failed.
    #[error("chunk store: {0}")]
    Store(#[from] rocksdb::Error),
    /// A record in metad or a chunk does not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A peer connection failed.
    #[error("peer {peer}: {why}")]
    Peer {
        /// The peer's address.
        peer: String,
        /// What failed.
        why: String,
    },
    /// Local I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Results of gvsfs operations.
pub type Result<T> = std::result::Result<T, GvsError>;

impl GvsError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> Errno {
        match self {
            GvsError::NotFound => Errno::ENOENT,
            GvsError::Exists => Errno::EEXIST,
            GvsError::NotEmpty => Errno::ENOTEMPTY,
            GvsError::IsDir => Errno::EISDIR,
            GvsError::NotDir => Errno::ENOTDIR,
            GvsError::Invalid(_) => Errno::EINVAL,
            GvsError::Unsupported(_) => Errno::EPERM,
            GvsError::TooLarge => Errno::EFBIG,
            GvsError::ReadOnly => Errno::EROFS,
            GvsError::Denied => Errno::EACCES,
            GvsError::NoAttr => Errno::NO_XATTR,
            GvsError::NameTooLong(_) => Errno::ENAMETOOLONG,
            GvsError::ValueTooLong(_) => Errno::E2BIG,
            GvsError::NoSpace(_) => Errno::ENOSPC,
            GvsError::Conflict(_) => Errno::EAGAIN,
            _ => Errno::EIO,
        }
    }
}

impl From<postcard::Error> for GvsError {
    fn from(e: postcard::Error) -> Self {
        GvsError::Corrupt(e.to_string())
    }
}
