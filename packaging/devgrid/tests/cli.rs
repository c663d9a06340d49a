//! The `devgrid` command line: exit statuses and errors as a user meets them.

use std::process::Command;

fn devgrid(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_devgrid"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn exec_passes_the_exit_status_through_and_errors_are_one_line() {
    let up = devgrid(&["up", "--nodes", "2", "--name", "hcli"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        stdout.contains("node2") && stdout.contains("10.77."),
        "{stdout}"
    );

    let exec = devgrid(&[
        "exec",
        "--name",
        "hcli",
        "node2",
        "--",
        "sh",
        "-c",
        "hostname; exit 7",
    ]);
    let stdout = String::from_utf8_lossy(&exec.stdout).into_owned();
    let bad_node = devgrid(&["exec", "--name", "hcli", "node9", "--", "true"]);
    let down = devgrid(&["down", "--name", "hcli"]);
    let not_up = devgrid(&["status", "--name", "hcli"]);
    let bad_name = devgrid(&["up", "--name", "Bad-Name"]);

    assert_eq!(exec.status.code(), Some(7));
    assert_eq!(stdout.trim(), "node2");
    assert!(down.status.success());
    for (out, want) in [
        (&bad_node, "grid hcli has no node \"node9\""),
        (&not_up, "grid hcli is not up"),
        (&bad_name, "bad grid name \"Bad-Name\""),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}
