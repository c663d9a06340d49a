//! The flags by which every grid command finds metad and proves it holds
//! the cluster secret. One definition, so that `metad`, `gvsfs`, `lcmd` and
//! `vmctl` take the same flags and the same environment (`METAD_ENDPOINTS`,
//! `METAD_SECRET_FILE`, which every grid node sets).

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthError, Secret};
use crate::client::ClientConfig;

/// Where metad is and how to authenticate to it; flatten it into a CLI.
#[derive(clap::Args, Debug, Clone)]
pub struct MetadArgs {
    /// metad members to talk to, host:port, comma-separated.
    #[arg(
        long,
        env = "METAD_ENDPOINTS",
        value_delimiter = ',',
        global = true,
        default_value = "127.0.0.1:2380"
    )]
    pub endpoints: Vec<String>,
    /// The file holding the cluster secret (hex).
    #[arg(
        long,
        env = "METAD_SECRET_FILE",
        global = true,
        default_value = "/etc/grid/secret"
    )]
    pub secret_file: PathBuf,
    /// Give up on a metad call after this many milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    pub timeout_ms: u64,
}

impl MetadArgs {
    /// The client configuration these flags describe (reads the secret).
    pub fn client_config(&self) -> Result<ClientConfig, AuthError> {
        let secret = Secret::load(&self.secret_file)?;
        let mut cfg = ClientConfig::new(self.endpoints.clone(), secret);
        cfg.timeout = Duration::from_millis(self.timeout_ms);
        Ok(cfg)
    }
}
