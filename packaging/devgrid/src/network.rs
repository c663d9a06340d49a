//! The grid's private network: a bridge on the host, one veth pair per node
//! whose node end is `eth0` in the node's network namespace, and cuts made
//! with an nftables table inside the node (so a cut never touches the host's
//! own rules and vanishes with the node).

use crate::cmd::{run, run_with_stdin};
use crate::error::Result;
use crate::layout::Layout;

/// The nftables table that holds a node's cut.
const CUT_TABLE: &str = "devgrid_cut";

/// The underlay's MTU: jumbo frames, as storage and VM networks in a
/// cluster use them (tunnelled appliance traffic and chunk copies move in
/// fewer, larger packets).
pub const UNDERLAY_MTU: &str = "9000";

/// Creates the bridge and gives the host an address on it, so that tools on
/// the host (benchmarks, the operator) reach every node.
pub(crate) fn create_bridge(l: &Layout) -> Result<()> {
    let br = l.bridge();
    run(&[
        "ip",
        "link",
        "add",
        &br,
        "mtu",
        UNDERLAY_MTU,
        "type",
        "bridge",
    ])?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", l.host_addr()),
        "dev",
        &br,
    ])?;
    run(&["ip", "link", "set", &br, "up"])?;
    Ok(())
}

/// Creates node `i`'s network namespace and plugs it into the bridge.
pub(crate) fn create_node(l: &Layout, i: usize) -> Result<()> {
    let ns = l.netns(i);
    let veth = l.veth(i);
    run(&["ip", "netns", "add", &ns])?;
    run(&[
        "ip",
        "link",
        "add",
        &veth,
        "mtu",
        UNDERLAY_MTU,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        UNDERLAY_MTU,
        "netns",
        &ns,
    ])?;
    run(&["ip", "link", "set", &veth, "master", &l.bridge(), "up"])?;
    let addr = format!("{}/24", l.addr(i));
    run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
    Ok(())
}

/// Drops node `i`'s traffic on `eth0`: outgoing only when `oneway`, else
/// both directions. Dropping (not rejecting) is what a pulled cable does:
/// peers see timeouts, not errors.
pub(crate) fn cut(l: &Layout, i: usize, oneway: bool) -> Result<()> {
    heal(l, i)?;
    let input = if oneway {
        ""
    } else {
        "chain in {\n type filter hook input priority -100; policy accept;\n iifname \"eth0\" drop\n }\n"
    };
    let rules = format!(
        "table inet {CUT_TABLE} {{\n\
         chain out {{\n type filter hook output priority -100; policy accept;\n oifname \"eth0\" drop\n }}\n\
         {input}}}\n"
    );
    run_with_stdin(
        &["ip", "netns", "exec", &l.netns(i), "nft", "-f", "-"],
        Some(&rules),
    )?;
    Ok(())
}

/// Removes node `i`'s cut, if any.
pub(crate) fn heal(l: &Layout, i: usize) -> Result<()> {
    if is_cut(l, i)?.is_some() {
        run(&[
            "ip",
            "netns",
            "exec",
            &l.netns(i),
            "nft",
            "delete",
            "table",
            "inet",
            CUT_TABLE,
        ])?;
    }
    Ok(())
}

/// Whether node `i` is cut: `None`, `Some(true)` for one-way, `Some(false)`
/// for both ways.
pub(crate) fn is_cut(l: &Layout, i: usize) -> Result<Option<bool>> {
    let tables = run(&["ip", "netns", "exec", &l.netns(i), "nft", "list", "tables"])?;
    if !tables.contains(CUT_TABLE) {
        return Ok(None);
    }
    let table = run(&[
        "ip",
        "netns",
        "exec",
        &l.netns(i),
        "nft",
        "list",
        "table",
        "inet",
        CUT_TABLE,
    ])?;
    Ok(Some(!table.contains("chain in")))
}

/// Deletes node `i`'s namespace (its veth pair, TAP devices and nftables go
/// with it); missing pieces are not an error, so teardown can be repeated.
pub(crate) fn delete_node(l: &Layout, i: usize) {
    let _ = run(&["ip", "netns", "del", &l.netns(i)]);
    let _ = run(&["ip", "link", "del", &l.veth(i)]);
}

/// Deletes the bridge, if it is there.
pub(crate) fn delete_bridge(l: &Layout) {
    let _ = run(&["ip", "link", "del", &l.bridge()]);
}
