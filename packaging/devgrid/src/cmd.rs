//! Running the system tools the grid is built with (`ip`, `nft`, `unshare`,
//! `mount`), turning a failure into an error that shows the command line.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};

/// Renders a command line for error messages and logs.
pub(crate) fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `argv` to completion and returns its stdout; a non-zero exit is an
/// error carrying its stderr.
pub(crate) fn run(argv: &[&str]) -> Result<String> {
    run_with_stdin(argv, None)
}

/// Like [`run`], feeding `stdin` to the command.
pub(crate) fn run_with_stdin(argv: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = display(&cmd);
    let mut child = cmd.spawn().ctx(|| format!("starting `{line}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())
            .ctx(|| format!("writing to `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .ctx(|| format!("waiting for `{line}`"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::Command {
            cmd: line,
            stderr: if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            },
        })
    }
}
