//! A small synchronous QMP client (QEMU's JSON control protocol over the
//! VM's unix socket): status, quit, migration.

use super::BackendError;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// An open, negotiated QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying until `timeout`, while QEMU creates the socket)
    /// and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, BackendError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(BackendError::Qmp(format!(
                        "connecting to {}: {e}",
                        path.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| BackendError::Qmp(e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| BackendError::Qmp(e.to_string()))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(BackendError::Qmp(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Bounds every later wait for an answer.
    pub fn set_timeout(&mut self, d: Duration) {
        let _ = self
            .writer
            .set_read_timeout(Some(d.max(Duration::from_millis(10))));
    }

    fn read(&mut self) -> Result<Value, BackendError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| BackendError::Qmp(format!("reading: {e}")))?;
        if n == 0 {
            return Err(BackendError::Qmp("QEMU closed the connection".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| BackendError::Qmp(format!("bad JSON {line:?}: {e}")))
    }

    /// Runs a command; returns its `return` value (events are skipped).
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, BackendError> {
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut text = req.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| BackendError::Qmp(format!("writing: {e}")))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(BackendError::Qmp(format!(
                    "{cmd}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                )));
            }
        }
    }

    /// `query-status`: "running", "paused", "inmigrate", "postmigrate", ...
    pub fn status(&mut self) -> Result<String, BackendError> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}
