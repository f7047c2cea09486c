//! Where a command goes in a cluster, decided once per command: the slot of its keys, split
//! across slots, every primary, or answered here.
//!
//! Which commands may be split or sent to every primary is Redis's own per-command data: the
//! `request_policy` and `response_policy` tips that Redis 7 publishes in `COMMAND DOCS`
//! (`multi_shard` + `agg_sum` for `DEL`, `all_shards` + `all_succeeded` for `FLUSHDB`, ...),
//! carried by the command traits ([`crate::command::traits::ClusterTip`]). Everything without
//! a tip and with keys in several slots gets Redis Cluster's own `CROSSSLOT` error, as the
//! cluster would answer.

use bytes::Bytes;

use crate::codec::Argv;
use crate::command::{BeginSearch, CommandSpec, FindKeys, KeyRef};
use crate::config::NodeAddr;

/// Redis Cluster's error for keys of one command in different slots.
pub const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
/// What a Redis without cluster support answers to `CLUSTER ...`: cluster-aware clients
/// then stay in single-node mode against the proxy, which does the routing for them.
pub const NO_CLUSTER: &[u8] = b"-ERR This instance has cluster support disabled\r\n";

pub use crate::command::traits::{ClusterMerge as Merge, ClusterTip as Tip};

/// A command's cluster tip, from the command traits.
pub fn tip(spec: &CommandSpec) -> Tip {
    spec.traits().cluster
}

/// The slot of a key (CRC16 of the key, or of its `{hash tag}`).
pub fn slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// Redis Cluster's answer to `SELECT`.
fn select_reply(argv: &Argv<'_>) -> &'static [u8] {
    match argv.get(1) {
        Some(b"0") if argv.len() == 2 => b"+OK\r\n",
        Some(_) if argv.len() == 2 => b"-ERR SELECT is not allowed in cluster mode\r\n",
        _ => b"-ERR wrong number of arguments for 'select' command\r\n",
    }
}

/// The answer to a command whose effect would stay on one node's connection with a cluster
/// upstream (`MONITOR` would show one node's traffic, `AUTH` one node's login, `CLIENT ...`
/// one connection's settings), so respguard refuses it rather than mislead.
pub fn stateful_reply(argv: &Argv<'_>, spec: Option<&'static CommandSpec>) -> Bytes {
    if let Some(s) = spec {
        if tip(s) == Tip::SelectZeroOnly {
            return Bytes::from_static(select_reply(argv));
        }
    }
    let name = spec.map_or("this command", |s| s.name);
    let mut b = bytes::BytesMut::new();
    crate::codec::encode_error(
        &mut b,
        &format!(
            "ERR '{name}' is not supported with a Redis Cluster upstream: its effect would \
             apply to one cluster node's connection only (see respguard's README, \"Scaling out\")"
        ),
    );
    b.freeze()
}

/// The slots of a command's shard channels (`SPUBLISH`, `SSUBSCRIBE`, `SUNSUBSCRIBE`), as
/// Redis Cluster hashes them: first the slot, then whether every channel has it. `None`
/// without channels.
fn channel_slot(argv: &Argv<'_>, spec: &CommandSpec) -> Option<(u16, bool)> {
    let ks = spec.key_specs.first()?;
    let (BeginSearch::Index(first), FindKeys::Range { last_key, .. }) = (ks.begin, ks.find) else {
        return None;
    };
    let first = usize::try_from(first).ok()?;
    let end = if last_key < 0 {
        argv.len()
    } else {
        (first + 1).min(argv.len())
    };
    let mut slots = (first..end).filter_map(|i| argv.get(i)).map(slot);
    let s = slots.next()?;
    Some((s, slots.all(|t| t == s)))
}

/// A `MOVED` or `ASK` error reply: the slot and the node it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved(u16, NodeAddr),
    Ask(u16, NodeAddr),
}

/// Reads a `-MOVED slot host:port` or `-ASK slot host:port` reply; `None` for anything else.
pub fn redirect(reply: &[u8]) -> Option<Redirect> {
    if !(reply.starts_with(b"-MOVED ") || reply.starts_with(b"-ASK ")) {
        return None;
    }
    let line = reply.get(1..reply.len().checked_sub(2)?)?;
    let text = std::str::from_utf8(line).ok()?;
    let mut w = text.split(' ');
    let kind = w.next()?;
    let slot: u16 = w.next()?.parse().ok()?;
    let addr = parse_addr(w.next()?)?;
    match kind {
        "MOVED" => Some(Redirect::Moved(slot, addr)),
        _ => Some(Redirect::Ask(slot, addr)),
    }
}

/// `host:port` as a redirection names a node.
pub fn parse_addr(s: &str) -> Option<NodeAddr> {
    let (host, port) = s.rsplit_once(':')?;
    Some(NodeAddr {
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

/// Where one client command goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To the node of this slot (`None`: keyless, any node).
    One(Option<u16>),
    /// Split by slot: per part its slot and the argv indices of its key groups.
    Split {
        merge: Merge,
        /// Arguments per key group (`MSET`: key and value).
        group: usize,
        parts: Vec<(u16, Vec<usize>)>,
    },
    AllShards(Merge),
    Scan,
    /// Answered here with these bytes.
    Local(&'static [u8]),
}

/// Decides the route of `argv` (`spec` is its row, `None` for unknown commands, which go to
/// any node and get Redis's own error). `keys` is scratch space.
pub fn route(argv: &Argv<'_>, spec: Option<&'static CommandSpec>, keys: &mut Vec<KeyRef>) -> Route {
    let Some(spec) = spec else {
        return Route::One(None);
    };
    let tip = tip(spec);
    match tip {
        Tip::NotCluster => return Route::Local(NO_CLUSTER),
        Tip::SelectZeroOnly => return Route::Local(select_reply(argv)),
        Tip::AllShards(m) => return Route::AllShards(m),
        Tip::Scan => return Route::Scan,
        Tip::ShardChannels => {
            if !spec.check_arity(argv.len()) {
                return Route::One(None);
            }
            return match channel_slot(argv, spec) {
                Some((s, true)) => Route::One(Some(s)),
                Some((_, false)) => Route::Local(CROSSSLOT),
                None => Route::One(None),
            };
        }
        Tip::Default | Tip::MultiShard(_) | Tip::ClientName { .. } => {}
    }
    if !spec.has_keys() || spec.keys(argv, keys).is_err() {
        // Wrong arity and the like: any node answers with Redis's own error.
        return Route::One(None);
    }
    let mut slots = keys.iter().filter_map(|k| argv.get(k.index)).map(slot);
    let Some(first) = slots.next() else {
        return Route::One(None);
    };
    if slots.all(|s| s == first) {
        return Route::One(Some(first));
    }
    let Tip::MultiShard(merge) = tip else {
        return Route::Local(CROSSSLOT);
    };
    let group = match spec.key_specs.first().map(|s| s.find) {
        Some(FindKeys::Range { step, .. }) if step > 0 => step as usize,
        _ => 1,
    };
    let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
    for k in keys.iter() {
        let Some(key) = argv.get(k.index) else {
            continue;
        };
        let s = slot(key);
        match parts.iter_mut().find(|(ps, _)| *ps == s) {
            Some((_, idx)) => idx.push(k.index),
            None => parts.push((s, vec![k.index])),
        }
    }
    Route::Split {
        merge,
        group,
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::OwnedArgv;
    use crate::command;

    fn route_of(args: &[&[u8]]) -> Route {
        let owned = OwnedArgv::new(args);
        let argv = owned.argv();
        let spec = command::lookup(&argv);
        route(&argv, spec, &mut Vec::new())
    }

    #[test]
    fn key_slots_follow_redis_including_hash_tags() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn keys_of_one_slot_go_to_that_slot_unchanged() {
        assert_eq!(route_of(&[b"GET", b"foo"]), Route::One(Some(12182)));
        assert_eq!(
            route_of(&[b"MGET", b"{t}a", b"{t}b"]),
            Route::One(Some(slot(b"t")))
        );
        assert_eq!(route_of(&[b"PING"]), Route::One(None));
    }

    #[test]
    fn redirections_name_their_slot_and_node() {
        let to = NodeAddr {
            host: "127.0.0.1".into(),
            port: 7001,
        };
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:7001\r\n"),
            Some(Redirect::Moved(3999, to.clone()))
        );
        assert_eq!(
            redirect(b"-ASK 12 127.0.0.1:7001\r\n"),
            Some(Redirect::Ask(12, to))
        );
        assert_eq!(redirect(b"-MOVED x 127.0.0.1:7001\r\n"), None);
        assert_eq!(redirect(b"-ERR MOVED 1 a:1\r\n"), None);
        assert_eq!(redirect(b"+OK\r\n"), None);
    }

    #[test]
    fn shard_channels_route_by_their_slot_like_keys() {
        assert_eq!(
            route_of(&[b"SPUBLISH", b"foo", b"m"]),
            Route::One(Some(12182))
        );
        assert_eq!(
            route_of(&[b"SSUBSCRIBE", b"{t}a", b"{t}b"]),
            Route::One(Some(slot(b"t")))
        );
        assert_eq!(
            route_of(&[b"SSUBSCRIBE", b"a", b"b"]),
            Route::Local(CROSSSLOT)
        );
        assert_eq!(route_of(&[b"SUNSUBSCRIBE"]), Route::One(None));
        assert_eq!(route_of(&[b"SPUBLISH", b"foo"]), Route::One(None));
    }

    #[test]
    fn multi_shard_commands_split_by_slot_in_key_groups() {
        let Route::Split {
            merge,
            group,
            parts,
        } = route_of(&[b"MSET", b"a", b"1", b"b", b"2", b"{a}x", b"3"])
        else {
            panic!("MSET across slots splits");
        };
        assert_eq!(merge, Merge::AllSucceeded);
        assert_eq!(group, 2);
        assert_eq!(parts, vec![(slot(b"a"), vec![1, 5]), (slot(b"b"), vec![3])]);
        assert!(matches!(
            route_of(&[b"DEL", b"a", b"b"]),
            Route::Split {
                merge: Merge::Sum,
                group: 1,
                ..
            }
        ));
    }

    #[test]
    fn atomic_commands_across_slots_get_crossslot() {
        for args in [
            &[&b"MSETNX"[..], b"a", b"1", b"b", b"2"][..],
            &[b"RENAME", b"a", b"b"],
            &[b"SMOVE", b"a", b"b", b"m"],
            &[b"SINTERSTORE", b"a", b"b"],
            &[b"EVAL", b"return 1", b"2", b"a", b"b"],
        ] {
            assert_eq!(route_of(args), Route::Local(CROSSSLOT), "{args:?}");
        }
    }

    #[test]
    fn whole_keyspace_and_cluster_commands() {
        assert_eq!(route_of(&[b"DBSIZE"]), Route::AllShards(Merge::Sum));
        assert_eq!(route_of(&[b"SCAN", b"0"]), Route::Scan);
        assert_eq!(route_of(&[b"CLUSTER", b"SLOTS"]), Route::Local(NO_CLUSTER));
        assert_eq!(
            route_of(&[b"SCRIPT", b"LOAD", b"return 1"]),
            Route::AllShards(Merge::AllSucceeded)
        );
    }
}
