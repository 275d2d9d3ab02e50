//! `hearth node`: a worker node. It joins the coordinator (found through `--peers`, the
//! LeaderWorkerSet leader, or mDNS), heartbeats, answers link probes and status queries, and
//! runs until SIGTERM/Ctrl-C. The flags are shared with the coordinator (`cluster.rs`).

use anyhow::{bail, Result};
use hearth_cluster::{LwsEnvironment, Node, Role};

use crate::commands::cluster::{run_until_signal, NodeArgs, ResourceArgs};

#[derive(clap::Args, Debug)]
pub struct NodeCommandArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub resources: ResourceArgs,
}

pub fn run(args: NodeCommandArgs) -> Result<()> {
    let (resources, free_memory) = args.resources.resources()?;
    let mut config = args.node.to_config(Role::Worker, resources, free_memory)?;
    if let Some(lws) = LwsEnvironment::from_env()? {
        if lws.is_leader() {
            bail!(
                "this pod is the LeaderWorkerSet leader (LWS_WORKER_INDEX=0): run `hearth cluster coordinator` here, \
                 and `hearth node` on the workers"
            );
        }
        config.peers.push(lws.leader_address);
        config.expected_nodes = lws.group_size;
    }
    if config.peers.is_empty() && config.mdns.is_none() {
        bail!("nothing to join: give --peers host:port (the coordinator), or leave mDNS on");
    }
    let node = Node::start(config)?;
    run_until_signal(node)
}
