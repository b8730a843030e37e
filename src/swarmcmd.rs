//! `trackside nodes`: the swarm's nodes, their labels, and the trackside
//! jobs each runs (docs/swarm.md).

use std::path::Path;

use trackside::exec::swarm::{Settings, SwarmExecutor};

use super::{Fail, write_out};

/// The manager: `--swarm-manager`, else `swarm: {manager}` of config.yml,
/// else DOCKER_HOST.
pub fn manager(flag: Option<String>, state: &Path) -> Result<String, Fail> {
    let cfg = trackside::store::gc::swarm_config(state).map_err(|e| Fail(e.to_string(), 2))?;
    Ok(flag
        .or(cfg.manager)
        .unwrap_or_else(trackside::exec::docker::daemon_address))
}

pub fn nodes(state: &Path, flag: Option<String>, json: bool) -> Result<u8, Fail> {
    let address = manager(flag, state)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail(format!("cannot start: {e}"), 1))?;
    rt.block_on(async {
        let swarm = SwarmExecutor::connect(&address, Settings::default())
            .await
            .map_err(|e| Fail(e.to_string(), 2))?;
        let nodes = swarm.cluster_nodes().await.map_err(|e| Fail(e.to_string(), 1))?;
        if json {
            let v = serde_json::to_value(&nodes).map_err(|e| Fail(format!("cannot write the nodes: {e}"), 1))?;
            write_out(&format!("{v}\n"));
            return Ok(0);
        }
        let mut rows = vec![[
            "NODE".to_string(),
            "STATE".into(),
            "AVAILABILITY".into(),
            "ROLE".into(),
            "CPUS".into(),
            "MEMORY".into(),
            "TASKS".into(),
            "LABELS".into(),
        ]];
        for n in &nodes {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rows.push([
                n.name().to_string(),
                n.state.clone(),
                n.availability.clone(),
                if n.manager { "manager" } else { "worker" }.into(),
                format!("{}", n.cpus),
                trackside::exec::preflight::gib(n.memory),
                n.trackside_tasks.to_string(),
                labels.join(","),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut text = format!("swarm managed at {address}: {} node(s)\n", nodes.len());
        for r in &rows {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        write_out(&text);
        Ok(0)
    })
}
