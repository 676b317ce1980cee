//! [`RedisCluster`]: primaries with every slot assigned.

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::{RedisServer, Reply, process::READY_TIMEOUT};

/// A Redis Cluster of primaries with every slot assigned, stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts a 3-primary Cluster and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When the Cluster does not form within 20 s.
    pub fn start() -> Self {
        Self::with_primaries(3)
    }

    /// Starts a Cluster of `n` primaries (at least 1).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn with_primaries(n: u16) -> Self {
        assert!(n >= 1);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::options().cluster(true).start())
            .collect();
        let per = 16_384 / n;
        for (i, node) in nodes.iter().enumerate() {
            let i = i as u16;
            let first = i * per;
            let last = if i + 1 == n { 16_383 } else { first + per - 1 };
            let epoch = (i + 1).to_string();
            let reply = node.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &epoch]);
            assert_eq!(reply, Reply::Status("OK".into()), "set-config-epoch");
            let reply = node.cmd(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]);
            assert_eq!(reply, Reply::Status("OK".into()), "addslotsrange");
        }
        for node in &nodes[1..] {
            let reply = nodes[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()]);
            assert_eq!(reply, Reply::Status("OK".into()), "meet");
        }
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let started = Instant::now();
        loop {
            let ok = self.nodes.iter().all(|node| {
                let info = node.cmd(&["CLUSTER", "INFO"]).as_text().unwrap_or_default();
                let nodes = node
                    .cmd(&["CLUSTER", "NODES"])
                    .as_text()
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && nodes
                        .lines()
                        .filter(|l| l.contains("master") && !l.contains("fail"))
                        .count()
                        == self.nodes.len()
            });
            if ok {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "cluster did not become ok"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=...`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes (to kill or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Runs a command on every node, returning the replies in node order.
    pub fn cmd_all(&self, args: &[&str]) -> Vec<Reply> {
        self.nodes.iter().map(|n| n.cmd(args)).collect()
    }

    /// The node serving `slot`.
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        let n = self.nodes.len() as u16;
        let per = 16_384 / n;
        &self.nodes[usize::from((slot / per).min(n - 1))]
    }
}
