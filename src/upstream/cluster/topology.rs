//! The slot map: which primary serves each of the 16384 slots, read from `CLUSTER SHARDS`
//! (Redis 7) or, where that command is unknown, `CLUSTER SLOTS`.
//!
//! These are control-plane replies, read once a refresh: they are decoded with
//! `redis-protocol` into frames rather than scanned like client traffic.

use bytes::Bytes;
use redis_protocol::resp2::decode::decode_bytes;
use redis_protocol::resp2::types::BytesFrame;

pub use crate::config::NodeAddr;

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;
/// A slot nobody serves.
const NONE: u16 = u16::MAX;

/// Why a topology reply could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("the node answered an error: {0}")]
    Refused(String),
    #[error("malformed {0} reply")]
    Malformed(&'static str),
    #[error("the node serves no slots: the cluster is not set up")]
    Empty,
}

/// Which primary serves each slot, and the replicas known, as of one refresh.
#[derive(Clone, Debug)]
pub struct SlotMap {
    /// Index into `primaries` per slot, or [`NONE`].
    owner: Box<[u16]>,
    /// Primaries, ordered by the lowest slot each serves (the `SCAN` cursor order).
    primaries: Vec<NodeAddr>,
    /// Every other node named (replicas), asked when no primary answers a refresh.
    replicas: Vec<NodeAddr>,
}

impl SlotMap {
    /// A map from `(first slot, last slot, primary)` ranges.
    pub fn from_ranges(ranges: &[(u16, u16, NodeAddr)], replicas: Vec<NodeAddr>) -> SlotMap {
        let mut sorted: Vec<&(u16, u16, NodeAddr)> = ranges.iter().collect();
        sorted.sort_by_key(|r| r.0);
        let mut owner = vec![NONE; SLOTS].into_boxed_slice();
        let mut primaries: Vec<NodeAddr> = Vec::new();
        for (a, b, node) in sorted {
            let idx = match primaries.iter().position(|p| p == node) {
                Some(i) => i,
                None => {
                    primaries.push(node.clone());
                    primaries.len() - 1
                }
            };
            let hi = usize::from(*b).min(SLOTS - 1);
            for s in usize::from(*a)..=hi {
                owner[s] = idx as u16;
            }
        }
        let replicas = replicas
            .into_iter()
            .filter(|r| !primaries.contains(r))
            .collect();
        SlotMap {
            owner,
            primaries,
            replicas,
        }
    }

    /// A map that knows no node yet.
    pub fn empty() -> SlotMap {
        SlotMap::from_ranges(&[], Vec::new())
    }

    /// The primary serving `slot`, if known.
    pub fn owner(&self, slot: u16) -> Option<&NodeAddr> {
        let i = *self.owner.get(usize::from(slot))?;
        self.primaries.get(usize::from(i))
    }

    /// Primaries in slot order.
    pub fn primaries(&self) -> &[NodeAddr] {
        &self.primaries
    }

    /// Replicas and other nodes that serve no slot.
    pub fn replicas(&self) -> &[NodeAddr] {
        &self.replicas
    }

    /// How many slots have an owner.
    pub fn covered(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NONE).count()
    }

    /// The same map with `slot` served by `node` (what a `MOVED` says).
    pub fn with_moved(&self, slot: u16, node: &NodeAddr) -> SlotMap {
        let mut next = self.clone();
        let idx = match next.primaries.iter().position(|p| p == node) {
            Some(i) => i,
            None => {
                next.primaries.push(node.clone());
                next.primaries.len() - 1
            }
        };
        if let Some(o) = next.owner.get_mut(usize::from(slot)) {
            *o = idx as u16;
        }
        next
    }
}

fn text(f: &BytesFrame) -> Option<String> {
    match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

fn int(f: &BytesFrame) -> Option<i64> {
    match f {
        BytesFrame::Integer(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn decode(reply: &[u8]) -> Result<BytesFrame, TopologyError> {
    match decode_bytes(&Bytes::copy_from_slice(reply)) {
        Ok(Some((BytesFrame::Error(e), _))) => Err(TopologyError::Refused(e.to_string())),
        Ok(Some((f, _))) => Ok(f),
        _ => Err(TopologyError::Malformed("topology")),
    }
}

/// The host to use for a node: its announced endpoint, or `fallback` (the host that was
/// asked) when the node announces none (`?` or empty, as Redis does for unknown endpoints).
fn host_or(endpoint: Option<String>, fallback: &str) -> String {
    match endpoint {
        Some(h) if !h.is_empty() && h != "?" => h,
        _ => fallback.to_string(),
    }
}

/// Decodes a `CLUSTER SHARDS` reply: per shard a map with `slots` (a flat list of range
/// bounds) and `nodes` (maps with `endpoint`/`ip`, `port`/`tls-port`, `role`, `health`).
/// `tls` picks the TLS port; `asked` is the host of the node that answered.
pub fn parse_shards(reply: &[u8], tls: bool, asked: &str) -> Result<SlotMap, TopologyError> {
    const WHAT: TopologyError = TopologyError::Malformed("CLUSTER SHARDS");
    let BytesFrame::Array(shards) = decode(reply)? else {
        return Err(WHAT);
    };
    let mut ranges = Vec::new();
    let mut others = Vec::new();
    for shard in &shards {
        let BytesFrame::Array(fields) = shard else {
            return Err(WHAT);
        };
        let mut slots: Vec<i64> = Vec::new();
        let mut primary = None;
        for pair in fields.chunks(2) {
            let [k, v] = pair else { return Err(WHAT) };
            match (text(k).as_deref(), v) {
                (Some("slots"), BytesFrame::Array(b)) => {
                    slots = b.iter().filter_map(int).collect();
                }
                (Some("nodes"), BytesFrame::Array(nodes)) => {
                    for n in nodes {
                        let BytesFrame::Array(nf) = n else {
                            return Err(WHAT);
                        };
                        let get = |name: &str| {
                            nf.chunks(2)
                                .find(|p| p.len() == 2 && text(&p[0]).as_deref() == Some(name))
                                .map(|p| &p[1])
                        };
                        let port_field = if tls { "tls-port" } else { "port" };
                        let Some(port) = get(port_field).and_then(int) else {
                            continue;
                        };
                        let endpoint = get("endpoint").and_then(text);
                        let host = host_or(endpoint.or_else(|| get("ip").and_then(text)), asked);
                        let Ok(port) = u16::try_from(port) else {
                            return Err(WHAT);
                        };
                        let addr = NodeAddr { host, port };
                        let role = get("role").and_then(text);
                        let health = get("health").and_then(text);
                        if role.as_deref() == Some("master") && health.as_deref() != Some("failed")
                        {
                            primary = Some(addr);
                        } else {
                            others.push(addr);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(p) = primary {
            for r in slots.chunks(2) {
                let [a, b] = r else { return Err(WHAT) };
                let (Ok(a), Ok(b)) = (u16::try_from(*a), u16::try_from(*b)) else {
                    return Err(WHAT);
                };
                ranges.push((a, b, p.clone()));
            }
        }
    }
    if ranges.is_empty() {
        return Err(TopologyError::Empty);
    }
    Ok(SlotMap::from_ranges(&ranges, others))
}

/// Decodes a `CLUSTER SLOTS` reply: `[first, last, [host, port, id, ...], replicas...]` per
/// range. Over TLS the ports given are the TLS ports already.
pub fn parse_slots(reply: &[u8], asked: &str) -> Result<SlotMap, TopologyError> {
    const WHAT: TopologyError = TopologyError::Malformed("CLUSTER SLOTS");
    let BytesFrame::Array(rows) = decode(reply)? else {
        return Err(WHAT);
    };
    let mut ranges = Vec::new();
    let mut others = Vec::new();
    for row in &rows {
        let BytesFrame::Array(f) = row else {
            return Err(WHAT);
        };
        let node = |f: &BytesFrame| -> Option<NodeAddr> {
            let BytesFrame::Array(n) = f else { return None };
            let host = host_or(n.first().and_then(text), asked);
            let port = u16::try_from(n.get(1).and_then(int)?).ok()?;
            Some(NodeAddr { host, port })
        };
        let (Some(a), Some(b), Some(p)) = (
            f.first().and_then(int),
            f.get(1).and_then(int),
            f.get(2).and_then(node),
        ) else {
            return Err(WHAT);
        };
        let (Ok(a), Ok(b)) = (u16::try_from(a), u16::try_from(b)) else {
            return Err(WHAT);
        };
        ranges.push((a, b, p));
        others.extend(f.iter().skip(3).filter_map(node));
    }
    if ranges.is_empty() {
        return Err(TopologyError::Empty);
    }
    Ok(SlotMap::from_ranges(&ranges, others))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        NodeAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn shards_reply_maps_every_range_to_its_healthy_primary() {
        let reply = b"*2\r\n\
*4\r\n$5\r\nslots\r\n*4\r\n:0\r\n:99\r\n:200\r\n:300\r\n$5\r\nnodes\r\n*2\r\n\
*8\r\n$4\r\nport\r\n:7000\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n\
*8\r\n$4\r\nport\r\n:7003\r\n$8\r\nendpoint\r\n$1\r\n?\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$6\r\nhealth\r\n$6\r\nonline\r\n\
*4\r\n$5\r\nslots\r\n*2\r\n:100\r\n:199\r\n$5\r\nnodes\r\n*1\r\n\
*8\r\n$4\r\nport\r\n:7001\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n";
        let map = parse_shards(reply, false, "10.0.0.1").expect("parses");
        assert_eq!(map.owner(0), Some(&addr(7000)));
        assert_eq!(map.owner(150), Some(&addr(7001)));
        assert_eq!(map.owner(250), Some(&addr(7000)));
        assert_eq!(map.owner(301), None);
        assert_eq!(map.covered(), 100 + 100 + 101);
        assert_eq!(map.primaries(), &[addr(7000), addr(7001)]);
        // An unknown endpoint is the host that was asked.
        assert_eq!(
            map.replicas(),
            &[NodeAddr {
                host: "10.0.0.1".into(),
                port: 7003
            }]
        );
    }

    #[test]
    fn slots_reply_maps_ranges_and_keeps_replicas() {
        let reply = b"*1\r\n*4\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n";
        let map = parse_slots(reply, "x").expect("parses");
        assert_eq!(map.covered(), SLOTS);
        assert_eq!(map.owner(16383), Some(&addr(7000)));
        assert_eq!(map.replicas(), &[addr(7003)]);
    }

    #[test]
    fn error_and_garbage_replies_are_refused_not_guessed() {
        assert!(matches!(
            parse_shards(b"-ERR unknown command\r\n", false, "h"),
            Err(TopologyError::Refused(_))
        ));
        assert!(parse_slots(b":1\r\n", "h").is_err());
        assert!(matches!(
            parse_slots(b"*0\r\n", "h"),
            Err(TopologyError::Empty)
        ));
    }

    #[test]
    fn moved_changes_one_slot_only() {
        let map = SlotMap::from_ranges(&[(0, 16383, addr(7000))], Vec::new());
        let next = map.with_moved(5, &addr(7001));
        assert_eq!(next.owner(5), Some(&addr(7001)));
        assert_eq!(next.owner(4), Some(&addr(7000)));
        assert_eq!(map.owner(5), Some(&addr(7000)));
    }
}
