//! `gvsfs`: The node storage daemon: the /gvs FUSE mount and the chunk store

use clap::Parser;

/// The node storage daemon: the /gvs FUSE mount and the chunk store
#[derive(Parser)]
#[command(name = "gvsfs", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
