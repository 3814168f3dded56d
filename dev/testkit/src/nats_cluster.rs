//! A throwaway three-node nats-server cluster with clustered JetStream, run as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::nats::{find_nats_server, spawn_logged, version_for_log, wait_ready};
use crate::support::{
    PORT_ATTEMPTS, START_TIMEOUT, http_request, pick_port, process_alive, read_lossy, tail,
    temp_folder, wait_until,
};

/// Nodes in the cluster: the smallest that keeps a majority (two) when one node is down.
const NODES: usize = 3;

/// The cluster name every node shares (nodes of other names are refused as routes).
const CLUSTER_NAME: &str = "testkit";

/// A throwaway three-node NATS cluster with JetStream, every node a child process on free ports on
/// 127.0.0.1 with its own folder (`<tmp>/node-<i>/`: store and `nats.log`). Killed and removed on
/// `Drop`, also when the test panics.
///
/// [`NatsCluster::start`] passes everything on the command line; [`NatsCluster::start_with_configs`]
/// runs each node from a configuration file of the caller's (the repository's
/// `nats-cluster/node-N.conf`, say) and overrides only its ports and routes.
#[derive(Debug)]
pub struct NatsCluster {
    dir: TempDir,
    binary: PathBuf,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    /// `server_name`, when the cluster sets it (a configuration file names its own node).
    name: Option<String>,
    config: Option<PathBuf>,
    dir: PathBuf,
    port: u16,
    cluster_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes (`nats-server -js -n testkit-nats-<i> --cluster_name testkit --cluster …
    /// --routes …`). Blocks until every node is ready and JetStream has a meta leader that every node
    /// knows (their `/healthz` says ok), at most 30 s; the error carries the tails of the logs.
    pub fn start() -> anyhow::Result<NatsCluster> {
        Self::launch_new(None)
    }

    /// As [`NatsCluster::start`], node `i` running `nats-server -c configs[i]` with its client, HTTP and
    /// cluster ports and its routes given on the command line (which win over the file). Each node
    /// runs in its own folder, so relative paths in the file (a `store_dir`) land there. The files
    /// must enable JetStream and name a cluster and a distinct `server_name`.
    pub fn start_with_configs(configs: &[PathBuf]) -> anyhow::Result<NatsCluster> {
        anyhow::ensure!(
            configs.len() == NODES,
            "a cluster has {NODES} nodes, {} configuration files were given",
            configs.len()
        );
        let mut absolute = Vec::with_capacity(NODES);
        for config in configs {
            let path = std::fs::canonicalize(config)
                .with_context(|| format!("nats-server configuration {}", config.display()))?;
            absolute.push(path);
        }
        Self::launch_new(Some(absolute))
    }

    fn launch_new(configs: Option<Vec<PathBuf>>) -> anyhow::Result<NatsCluster> {
        let began = Instant::now();
        let binary = find_nats_server()?;
        let dir = temp_folder("testkit-nats-cluster-", None)?;
        let mut nodes = Vec::with_capacity(NODES);
        for i in 0..NODES {
            let node_dir = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(node_dir.join("store"))
                .with_context(|| format!("creating {}", node_dir.display()))?;
            let config = configs.as_ref().map(|configs| configs[i].clone());
            nodes.push(Node {
                name: config.is_none().then(|| format!("testkit-nats-{i}")),
                config,
                dir: node_dir,
                port: 0,
                cluster_port: 0,
                http_port: 0,
                child: None,
            });
        }
        let mut cluster = NatsCluster { dir, binary, nodes };

        // Another process can take a port between pick_port() and the server's bind; the routes name
        // every node's cluster port, so a taken port means new ports for the whole cluster.
        for attempt in 1..=PORT_ATTEMPTS {
            for node in &mut cluster.nodes {
                node.port = pick_port()?;
                node.cluster_port = pick_port()?;
                node.http_port = pick_port()?;
            }
            let offsets: Vec<usize> = (0..NODES).map(|i| cluster.log(i).len()).collect();
            match cluster.launch_all() {
                Ok(()) => {
                    tracing::info!(
                        binary = %cluster.binary.display(),
                        version = %version_for_log(&cluster.binary),
                        urls = %cluster.urls(),
                        dir = %cluster.dir().display(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "nats cluster started"
                    );
                    return Ok(cluster);
                }
                Err(error) if attempt < PORT_ATTEMPTS && cluster.a_port_was_taken(&offsets) => {
                    tracing::warn!(%error, "a port was taken, trying other ports");
                }
                Err(error) => return Err(error),
            }
        }
        bail!("the nats cluster found no free ports in {PORT_ATTEMPTS} attempts")
    }

    /// How many nodes the cluster has (three).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, comma-separated: the value for `NATS_URL`.
    pub fn urls(&self) -> String {
        (0..self.size())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:{port}` of node `i`.
    ///
    /// # Panics
    /// When there is no node `i`, as every per-node method.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.node(i).port)
    }

    /// The client port of node `i` on 127.0.0.1.
    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    /// The monitoring port of node `i` (`/varz`, `/jsz`, `/healthz`).
    pub fn http_port(&self, i: usize) -> u16 {
        self.node(i).http_port
    }

    /// The temporary folder holding every node's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills node `i` (SIGKILL: no goodbye to clients or to the other nodes) and reaps it. Its
    /// store stays, for [`NatsCluster::start_again`]. Does nothing when it is not running.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.node_mut(i);
        if let Some(mut child) = node.child.take() {
            // kill fails only when the child already exited; wait reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("waiting for nats node {i} to exit"))?;
        }
        Ok(())
    }

    /// Starts node `i` again on the same ports with the same store. Blocks until it is ready and
    /// its `/healthz` says ok, which on a clustered JetStream also means its copies of the streams
    /// have caught up with their leaders (at most 30 s). Does nothing when it is running.
    pub fn start_again(&mut self, i: usize) -> anyhow::Result<()> {
        if self.is_running(i) {
            return Ok(());
        }
        let began = Instant::now();
        let deadline = began + START_TIMEOUT;
        let offset = self.log(i).len();
        self.spawn(i)?;
        let ready = self
            .wait_started(i, offset, deadline)
            .and_then(|()| self.wait_healthy_until(&[i], deadline));
        if let Err(error) = ready {
            let _ = self.kill(i);
            return Err(self.with_logs(error));
        }
        tracing::info!(
            node = i,
            port = self.port(i),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "nats node started again"
        );
        Ok(())
    }

    /// Whether node `i`'s process is alive.
    pub fn is_running(&self, i: usize) -> bool {
        self.node(i)
            .child
            .as_ref()
            .is_some_and(|child| process_alive(child.id()))
    }

    /// Waits until every running node's `/healthz` says ok (a meta leader is known and the node's
    /// stream and consumer copies are current), at most `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..self.size()).filter(|&i| self.is_running(i)).collect();
        self.wait_healthy_until(&running, Instant::now() + timeout)
            .map_err(|error| self.with_logs(error))
    }

    /// Node `i`'s `/healthz` answer: `Ok(())` on 200, else its status line and body.
    pub fn health(&self, i: usize) -> anyhow::Result<()> {
        let (status, body) = http_get(self.http_port(i), "/healthz")?;
        anyhow::ensure!(status == 200, "node {i} /healthz: {status} {}", body.trim());
        Ok(())
    }

    /// The JetStream meta leader's server name, as a running node reports it (`/jsz`); `None` while
    /// there is none or no node answers.
    pub fn meta_leader(&self) -> Option<String> {
        (0..self.size())
            .filter(|&i| self.is_running(i))
            .find_map(|i| {
                let (status, body) = http_get(self.http_port(i), "/jsz").ok()?;
                if status != 200 {
                    return None;
                }
                let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
                jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
            })
    }

    /// Node `i`'s log so far, for failure messages.
    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.log_path(i))
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.size())
            .map(|i| {
                format!(
                    "--- tail of nats node {i} ({}) ---\n{}",
                    self.log_path(i).display(),
                    tail(&self.log(i), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn node(&self, i: usize) -> &Node {
        match self.nodes.get(i) {
            Some(node) => node,
            None => panic!("the cluster has nodes 0..{}, not {i}", self.nodes.len()),
        }
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let size = self.nodes.len();
        match self.nodes.get_mut(i) {
            Some(node) => node,
            None => panic!("the cluster has nodes 0..{size}, not {i}"),
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.node(i).dir.join("nats.log")
    }

    fn with_logs(&self, error: anyhow::Error) -> anyhow::Error {
        anyhow!("{error:#}\n{}", self.logs())
    }

    /// Spawns every node, then waits for all of them and for a meta leader; on failure no node runs.
    fn launch_all(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        if let Err(error) = self.try_launch_all(deadline) {
            let error = self.with_logs(error);
            for i in 0..self.size() {
                let _ = self.kill(i);
            }
            return Err(error);
        }
        Ok(())
    }

    fn try_launch_all(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.size()).collect();
        let offsets: Vec<usize> = all.iter().map(|&i| self.log(i).len()).collect();
        for &i in &all {
            self.spawn(i)?;
        }
        for &i in &all {
            self.wait_started(i, offsets[i], deadline)?;
        }
        self.wait_healthy_until(&all, deadline)
    }

    /// Spawns node `i` without waiting for it.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let routes = self
            .nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let log_path = self.log_path(i);
        let binary = self.binary.clone();
        let node = self.node_mut(i);
        let mut command = Command::new(&binary);
        match (&node.config, &node.name) {
            (Some(config), _) => {
                command.arg("-c").arg(config);
            }
            (None, Some(name)) => {
                command
                    .args(["-js", "-n", name, "--cluster_name", CLUSTER_NAME, "-sd"])
                    .arg(node.dir.join("store"));
            }
            (None, None) => bail!("nats node {i} has neither a configuration nor a name"),
        }
        command
            .args(["-a", "127.0.0.1", "-p"])
            .arg(node.port.to_string())
            .arg("-m")
            .arg(node.http_port.to_string())
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
            .arg("--routes")
            .arg(routes)
            .current_dir(&node.dir);
        let child = spawn_logged(command, &log_path)?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `i`'s log (after `offset`) says "Server is ready" and its port accepts TCP.
    fn wait_started(&mut self, i: usize, offset: usize, deadline: Instant) -> anyhow::Result<()> {
        let log_path = self.log_path(i);
        let port = self.port(i);
        let node = self.node_mut(i);
        wait_ready(
            &mut node.child,
            &log_path,
            offset,
            port,
            deadline,
            &format!("nats node {i}"),
        )
    }

    fn wait_healthy_until(&self, nodes: &[usize], deadline: Instant) -> anyhow::Result<()> {
        for &i in nodes {
            let mut last = String::new();
            let waited = wait_until(
                deadline,
                &format!("nats node {i} to be healthy"),
                || match self.health(i) {
                    Ok(()) => Ok(true),
                    Err(error) => {
                        last = format!("{error:#}");
                        Ok(false)
                    }
                },
            );
            waited.with_context(|| format!("last answer: {last}"))?;
        }
        Ok(())
    }

    fn a_port_was_taken(&self, offsets: &[usize]) -> bool {
        (0..self.size()).any(|i| {
            self.log(i)
                .get(offsets[i]..)
                .is_some_and(|log| log.contains("address already in use"))
        })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.size() {
            if let Err(error) = self.kill(i) {
                tracing::warn!(node = i, %error, "stopping a nats node failed");
            }
        }
        // The TempDir field removes the folders after this.
    }
}

/// `GET path` on a node's monitoring port.
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(port, "GET", path, None, Duration::from_secs(2))
}
