//! `vmctl`: the grid's VM manager: CLI and node agent.

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;
use vmctl::agent::{Agent, AgentConfig};
use vmctl::cli::{AppCmd, Cli, Cmd, NodeCmd, VmCmd};
use vmctl::commands::{self as c, CmdError};
use vmctl::store::Store;

fn node_mem_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (kib / 1024).saturating_sub(512)
}

async fn run(cli: Cli) -> Result<String, CmdError> {
    let store = Store::connect(cli.metad.endpoints.clone(), &cli.metad.secret_file)?;
    match cli.cmd {
        Cmd::App(AppCmd::Create { file, json }) => c::app_create(&store, &file, json).await,
        Cmd::App(AppCmd::Start { name, timeout }) => {
            c::app_start(&store, &name, Duration::from_secs(timeout)).await
        }
        Cmd::App(AppCmd::Stop { name, timeout }) => {
            c::app_stop(&store, &name, Duration::from_secs(timeout)).await
        }
        Cmd::App(AppCmd::Destroy { name, force }) => c::app_destroy(&store, &name, force).await,
        Cmd::App(AppCmd::List { json }) => c::app_list(&store, json).await,
        Cmd::App(AppCmd::Show { name, json }) => c::app_show(&store, &name, json).await,
        Cmd::Vm(VmCmd::List { app, json }) => c::vm_list(&store, app.as_deref(), json).await,
        Cmd::Vm(VmCmd::Show { name, json }) => c::vm_show(&store, &name, json).await,
        Cmd::Vm(VmCmd::Start { name, timeout }) => {
            c::vm_start(&store, &name, Duration::from_secs(timeout)).await
        }
        Cmd::Vm(VmCmd::Stop { name, timeout }) => {
            c::vm_stop(&store, &name, Duration::from_secs(timeout)).await
        }
        Cmd::Vm(VmCmd::Console { name, follow }) => c::vm_console(&store, &name, follow)
            .await
            .map(|()| String::new()),
        Cmd::Vm(VmCmd::Migrate {
            name,
            node,
            timeout,
        }) => c::vm_migrate(&store, &name, &node, Duration::from_secs(timeout)).await,
        Cmd::Node(NodeCmd::List { json }) => c::node_list(&store, json).await,
        Cmd::Events { follow, json } => c::events(&store, follow, json)
            .await
            .map(|()| String::new()),
        Cmd::Agent {
            node,
            cpus,
            mem,
            bw,
            run_dir,
            nic_dir,
        } => {
            let node = node.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            });
            let mem_mib = match mem {
                Some(m) => vmctl::units::parse_mem_mib(&m)
                    .map_err(|e| CmdError::Refused(format!("--mem: {e}")))?,
                None => node_mem_mib(),
            };
            let bw_mbit = vmctl::units::parse_bw_mbit(&bw)
                .map_err(|e| CmdError::Refused(format!("--bw: {e}")))?;
            let cpus = cpus.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            });
            let cfg = AgentConfig {
                node,
                cpus,
                mem_mib,
                bw_mbit,
                run_root: run_dir,
                accel_cache: "/var/cache/grid/vmctl/accel".into(),
                nic_dir,
            };
            Agent::new(cfg, store).run().await?;
            Ok(String::new())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Agent { .. }) {
        metad::logging::init();
        metad::limits::raise_nofile_limit_or_warn();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmctl: {e}");
            ExitCode::FAILURE
        }
    }
}
