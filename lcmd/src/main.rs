//! `lcmd`: The node connection daemon: appliance TAPs, tunnels and enforcement

use clap::Parser;

/// The node connection daemon: appliance TAPs, tunnels and enforcement
#[derive(Parser)]
#[command(name = "lcmd", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
