//! What one Redis node says about the cluster: `CLUSTER NODES`, parsed.
//!
//! A line is `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link>
//! <slot>...`, where a slot is `N`, `A-B`, or (on the node's own line only) an open migration,
//! `[N->-<dest id>]` or `[N-<-<source id>]`.

use std::fmt;

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// One node as an observer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    /// The address the observer uses for it; empty when it has none (`noaddr`).
    pub ip: String,
    pub port: u16,
    pub myself: bool,
    pub master: bool,
    /// `fail` or `fail?`: the observer cannot reach it.
    pub failing: bool,
    pub handshake: bool,
    /// The master it replicates, for a replica.
    pub master_id: Option<String>,
    pub config_epoch: u64,
    pub connected: bool,
    /// Owned slots as inclusive ranges.
    pub slots: Vec<(u16, u16)>,
    /// Open migrations on the node's own line: slot and the other side's id.
    pub migrating: Vec<(u16, String)>,
    pub importing: Vec<(u16, String)>,
}

impl NodeLine {
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|(a, b)| usize::from(*b - *a) + 1)
            .sum()
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    pub fn is_replica(&self) -> bool {
        self.master_id.is_some()
    }
}

/// A line of `CLUSTER NODES` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unreadable CLUSTER NODES line: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// Parses the whole reply of `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeLine>, ParseError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Result<NodeLine, ParseError> {
    let bad = || ParseError(line.to_owned());
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return Err(bad());
    }
    // `ip:port@cport[,hostname]`; the ip may be empty and IPv6 contains colons.
    let endpoint = fields[1].split(',').next().unwrap_or_default();
    let ip_port = endpoint.split('@').next().unwrap_or_default();
    let (ip, port) = ip_port.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let has = |f: &str| flags.contains(&f);
    let mut node = NodeLine {
        id: fields[0].to_owned(),
        ip: if has("noaddr") {
            String::new()
        } else {
            ip.to_owned()
        },
        port,
        myself: has("myself"),
        master: has("master"),
        failing: has("fail") || has("fail?"),
        handshake: has("handshake"),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        config_epoch: fields[6].parse().map_err(|_| bad())?,
        connected: fields[7] == "connected",
        slots: Vec::new(),
        migrating: Vec::new(),
        importing: Vec::new(),
    };
    for slot in &fields[8..] {
        if let Some(open) = slot.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if let Some((n, dest)) = open.split_once("->-") {
                node.migrating
                    .push((n.parse().map_err(|_| bad())?, dest.to_owned()));
            } else if let Some((n, source)) = open.split_once("-<-") {
                node.importing
                    .push((n.parse().map_err(|_| bad())?, source.to_owned()));
            } else {
                return Err(bad());
            }
        } else if let Some((a, b)) = slot.split_once('-') {
            node.slots
                .push((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?));
        } else {
            let n = slot.parse().map_err(|_| bad())?;
            node.slots.push((n, n));
        }
    }
    Ok(node)
}

/// Sorted slots as inclusive ranges: `[1, 2, 3, 7]` → `[(1, 3), (7, 7)]`.
pub(crate) fn ranges(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &s in slots {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_masters_replicas_flags_and_open_migrations() {
        let text = "\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001,redis-0.h.ns.svc myself,master - 0 0 1 connected 0-5460 7000 [93->-292f8b365bb7edb5e285caf0b7e6ddc7265a2f4d]
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.4:30004@31004,redis-3.h.ns.svc slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
292f8b365bb7edb5e285caf0b7e6ddc7265a2f4d 127.0.0.3:30003@31003, master,fail? - 1426238316232 1426238316232 3 disconnected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 master,noaddr - 1 1 0 disconnected
";
        let nodes = parse_nodes(text).unwrap();
        assert_eq!(nodes.len(), 4);
        let me = &nodes[0];
        assert!(me.myself && me.master && !me.failing);
        assert_eq!(me.slots, vec![(0, 5460), (7000, 7000)]);
        assert_eq!(me.slot_count(), 5462);
        assert_eq!(
            me.migrating,
            vec![(93, "292f8b365bb7edb5e285caf0b7e6ddc7265a2f4d".to_owned())]
        );
        assert_eq!((me.ip.as_str(), me.port), ("127.0.0.1", 30001));
        let replica = &nodes[1];
        assert_eq!(
            replica.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(!replica.master && replica.connected);
        assert!(nodes[2].failing && !nodes[2].connected);
        assert_eq!(nodes[3].ip, "");
        assert!(parse_nodes("garbage line").is_err());
    }

    #[test]
    fn ranges_compress_sorted_slots() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 7), (9, 10)]);
        assert!(ranges(&[]).is_empty());
    }
}
