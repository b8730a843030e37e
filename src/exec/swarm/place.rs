//! Where a job may run on the swarm: its labels as placement constraints,
//! whether any node could ever take it, and how a node is named in
//! messages. Pure: the caller lists the nodes.

use std::collections::BTreeMap;

use bollard::models::{Node, NodeSpecAvailabilityEnum, NodeState};

/// A job label (a GitLab tag, a GitHub `runs-on` label, a native
/// `node_labels` entry) as a Swarm constraint: `key=value` and `key!=value`
/// compare the node label `key`; a bare `name` asks for the node label
/// `name=true` (a node "has" the tag), as GitLab runners' tags work.
pub fn constraint(label: &str) -> String {
    let label = label.trim();
    if let Some((k, v)) = label.split_once("!=") {
        format!("node.labels.{}!={}", k.trim(), v.trim())
    } else if let Some((k, v)) = label.split_once('=') {
        format!("node.labels.{}=={}", k.trim(), v.trim())
    } else {
        format!("node.labels.{label}==true")
    }
}

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    /// Its address in the swarm (what `docker node inspect` calls Addr).
    pub addr: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Ready (its daemon reports).
    pub ready: bool,
    /// Active (not drained or paused).
    pub active: bool,
    /// `active`, `drain` or `pause`.
    pub availability: String,
    pub manager: bool,
    /// Its CPUs in billionths, and its memory in bytes.
    pub nano_cpus: i64,
    pub memory: i64,
    /// Its state as Swarm says it (`ready`, `down`, ...).
    pub state: String,
}

impl NodeView {
    pub fn of(node: &Node) -> NodeView {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let desc = node.description.as_ref();
        let res = desc.and_then(|d| d.resources.as_ref());
        let state = status.and_then(|s| s.state).unwrap_or(NodeState::UNKNOWN);
        NodeView {
            id: node.id.clone().unwrap_or_default(),
            addr: status.and_then(|s| s.addr.clone()).unwrap_or_default(),
            hostname: desc.and_then(|d| d.hostname.clone()).unwrap_or_default(),
            labels: spec
                .and_then(|s| s.labels.as_ref())
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            ready: state == NodeState::READY,
            active: spec.and_then(|s| s.availability) == Some(NodeSpecAvailabilityEnum::ACTIVE),
            availability: spec
                .and_then(|s| s.availability)
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into()),
            manager: node.manager_status.is_some(),
            nano_cpus: res.and_then(|r| r.nano_cpus).unwrap_or(0),
            memory: res.and_then(|r| r.memory_bytes).unwrap_or(0),
            state: state.to_string(),
        }
    }

    /// `10.231.0.2 (pool=b)`: how messages name it (hostnames are often
    /// the same on every node of a test cluster; addresses are not).
    pub fn describe(&self) -> String {
        let name = if self.addr.is_empty() {
            &self.hostname
        } else {
            &self.addr
        };
        let short: String = self.id.chars().take(12).collect();
        let name = if name.is_empty() { &short } else { name };
        if self.labels.is_empty() {
            name.to_string()
        } else {
            let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name} ({})", labels.join(", "))
        }
    }

    /// Whether the node's labels satisfy every constraint of [`constraint`]'s form.
    pub fn satisfies(&self, constraints: &[String]) -> bool {
        constraints.iter().all(|c| {
            let Some(rest) = c.strip_prefix("node.labels.") else {
                return true; // not ours: Swarm decides
            };
            if let Some((k, v)) = rest.split_once("!=") {
                self.labels.get(k).map(String::as_str) != Some(v)
            } else if let Some((k, v)) = rest.split_once("==") {
                self.labels.get(k).map(String::as_str) == Some(v)
            } else {
                true
            }
        })
    }
}

/// Why no node of the swarm could ever take a job with these labels (as
/// the job writes them) and reservation (billionths of a CPU, bytes), or
/// `None` when one could once it has room. Drained, paused and down nodes
/// do not count.
pub fn never_fits(nodes: &[NodeView], labels: &[String], nano_cpus: i64, memory: i64) -> Option<String> {
    let constraints: Vec<String> = labels.iter().map(|l| constraint(l)).collect();
    let usable: Vec<&NodeView> = nodes.iter().filter(|n| n.ready && n.active).collect();
    if usable.is_empty() {
        return Some(format!("no node is ready and active ({} in the swarm)", nodes.len()));
    }
    let labelled: Vec<&&NodeView> = usable.iter().filter(|n| n.satisfies(&constraints)).collect();
    if labelled.is_empty() {
        let have: Vec<String> = usable.iter().map(|n| n.describe()).collect();
        return Some(format!(
            "no ready and active node has the labels {} (nodes: {})",
            labels.join(", "),
            have.join("; ")
        ));
    }
    if labelled.iter().any(|n| n.nano_cpus >= nano_cpus && n.memory >= memory) {
        return None;
    }
    let cpus = labelled.iter().map(|n| n.nano_cpus).max().unwrap_or(0);
    let mem = labelled.iter().map(|n| n.memory).max().unwrap_or(0);
    Some(format!(
        "it reserves {} CPUs and {} of memory; the largest node that may take it has {} CPUs and {}",
        nano_cpus as f64 / 1e9,
        crate::exec::preflight::gib(memory.max(0) as u64),
        cpus as f64 / 1e9,
        crate::exec::preflight::gib(mem.max(0) as u64),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str, labels: &[(&str, &str)], cpus: i64, mem_gib: i64) -> NodeView {
        NodeView {
            id: format!("id-{addr}"),
            addr: addr.into(),
            hostname: "vm".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ready: true,
            active: true,
            availability: "active".into(),
            manager: false,
            nano_cpus: cpus * 1_000_000_000,
            memory: mem_gib << 30,
            state: "ready".into(),
        }
    }

    #[test]
    fn labels_become_constraints() {
        assert_eq!(constraint("pool=a"), "node.labels.pool==a");
        assert_eq!(constraint(" pool != b "), "node.labels.pool!=b");
        assert_eq!(constraint("gpu"), "node.labels.gpu==true");
        let n = node("10.0.0.1", &[("pool", "a"), ("gpu", "true")], 2, 4);
        assert!(n.satisfies(&[constraint("pool=a"), constraint("gpu")]));
        assert!(!n.satisfies(&[constraint("pool=b")]));
        assert!(n.satisfies(&[constraint("pool!=b")]));
        assert!(!n.satisfies(&[constraint("ssd")]));
        assert_eq!(n.describe(), "10.0.0.1 (gpu=true, pool=a)");
    }

    #[test]
    fn a_job_never_fits_only_when_no_usable_node_could_take_it() {
        let mut nodes = vec![
            node("10.0.0.1", &[("pool", "a")], 2, 8),
            node("10.0.0.2", &[("pool", "b")], 4, 4),
        ];
        assert_eq!(never_fits(&nodes, &[], 1_000_000_000, 1 << 30), None);
        assert_eq!(
            never_fits(&nodes, &["pool=b".to_string()], 4_000_000_000, 4 << 30),
            None
        );
        let why = never_fits(&nodes, &["pool=b".to_string()], 0, 8 << 30).unwrap();
        assert!(why.contains("largest node that may take it has 4 CPUs"), "{why}");
        let why = never_fits(&nodes, &["pool=c".to_string()], 0, 0).unwrap();
        assert!(
            why.contains("the labels pool=c") && why.contains("10.0.0.2 (pool=b)"),
            "{why}"
        );
        // A drained node takes nothing new.
        nodes[1].active = false;
        assert!(never_fits(&nodes, &["pool=b".to_string()], 0, 0).is_some());
        nodes[0].ready = false;
        assert!(never_fits(&nodes, &[], 0, 0).unwrap().contains("no node is ready"));
    }
}
