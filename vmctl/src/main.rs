//! `vmctl`: The grid VM manager: CLI and node agent

use clap::Parser;

/// The grid VM manager: CLI and node agent
#[derive(Parser)]
#[command(name = "vmctl", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
