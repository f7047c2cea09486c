//! The proxy's own per-row command traits: everything the session, the shared upstream
//! connections, the policy stages and the metrics treat differently for some commands, derived
//! once per table row so that no other module matches command names.
//!
//! The generated table says what Redis says about a command (flags, ACL categories, key specs,
//! TTL arguments); this table says what respguard does about it: whether it may run on a
//! shared upstream connection, whether it may block, how it changes reply pairing, how its
//! reply counts as hits and misses, where it carries values the sensitive stage inspects.
//! [`traits`] is asked for every command of every pipeline, so it is an index into a table
//! built on first use.

use std::sync::OnceLock;

use super::{
    CommandSpec, ACL_BLOCKING, ACL_CONNECTION, ACL_PUBSUB, ACL_TRANSACTION, CMD_BLOCKING,
    CMD_NO_MULTI,
};

/// Connection-level behaviour of the few commands that change how replies are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    None,
    Multi,
    Exec,
    Discard,
    Hello,
    Reset,
    Quit,
    Monitor,
    Pubsub,
    /// `WATCH`: the connection now watches keys (until EXEC, DISCARD, UNWATCH or RESET).
    Watch,
    /// `UNWATCH`.
    Unwatch,
    /// `SYNC`/`PSYNC`: refused, as the replication stream is not made of replies.
    Replication,
    /// `CLIENT REPLY`: the reply mode is applied by the proxy.
    ClientReply,
}

/// How a read command's reply turns into hits and misses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// Not counted.
    None,
    /// One value: nil is a miss (`GET`, `GETEX`, `GETDEL`, `HGET`, `JSON.GET`).
    Value,
    /// An array with one value per key, nil a miss (`MGET`).
    PerKey,
    /// An array with one value per field of one key (`HMGET`).
    PerField,
    /// A collection: empty is a miss (`HGETALL`, `LRANGE`, `SMEMBERS`, `ZRANGE`).
    Collection,
    /// An integer count of the keys or fields that exist (`EXISTS`, `HEXISTS`).
    Count,
}

/// Which argc a single-value write needs before its value is where [`Values::Single`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argc {
    Exactly(u8),
    AtLeast(u8),
}

impl Argc {
    pub fn admits(self, argc: usize) -> bool {
        match self {
            Argc::Exactly(n) => argc == usize::from(n),
            Argc::AtLeast(n) => argc >= usize::from(n),
        }
    }
}

/// What Redis replies to a hash write left with no field to write: the reply the proxy gives
/// when every field was stripped (the key is then not created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashEmpty {
    /// `HMSET`: `+OK`.
    Ok,
    /// `HSET`, `HSETNX`: `:0`.
    Zero,
}

/// Where a command carries values to Redis, as the sensitive stage inspects them. Key
/// positions are argv indices; the key of every shape except `MSET` and `JSON.MSET` is argv 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// No value the stage looks at.
    None,
    /// One value of key 1 at `value` (`SET`, `SETNX`, `GETSET`, `SETEX`, `PSETEX`, `LSET`,
    /// `LINSERT`, `ZINCRBY`), when the argc matches.
    Single { value: u8, argc: Argc },
    /// Key/value pairs (`MSET`, `MSETNX`).
    KeyValuePairs,
    /// Every argument after key 1 is a value (`LPUSH`, `RPUSH`, `LPUSHX`, `RPUSHX`, `SADD`).
    Elements,
    /// Field/value pairs of key 1 (`HSET`, `HMSET`, `HSETNX`). `single_pair` for `HSETNX`.
    HashFields { empty: HashEmpty, single_pair: bool },
    /// `ZADD`: options, then score/member pairs.
    SortedSetMembers,
    /// `XADD`: options and ID, then field/value pairs.
    StreamFields,
    /// `GEOADD`: options, then longitude/latitude/member triples.
    GeoMembers,
    /// The message of `PUBLISH`/`SPUBLISH`; argv 1 is a channel, not a key.
    Message,
    /// Changes part of a string (`APPEND`, `SETRANGE`, `SETBIT`, and `BITFIELD` when it has a
    /// `SET` or `INCRBY` operation): the resulting value cannot be seen.
    PartialString { bitfield: bool },
    /// RedisJSON writes under paths respguard does not resolve. `per_triple` for `JSON.MSET`
    /// (key, path, value triples).
    UninspectedJson { per_triple: bool },
    /// `RESTORE`: a serialized value.
    Restore,
    /// `JSON.SET key path value`.
    JsonDocument,
}

/// Which advice a refusal of a denied command gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyHint {
    /// Only that the command is denied by the policy.
    Denied,
    /// `KEYS`: use SCAN.
    UseScan,
    /// `FLUSHALL`, `FLUSHDB`: expire or delete what was changed.
    Flush,
    /// Administrative commands belong to a direct connection to Redis.
    Admin,
}

/// How a command runs against a Redis Cluster: Redis 7's own `request_policy` and
/// `response_policy` tips (`COMMAND DOCS`), plus the commands a proxy answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterTip {
    /// Keys of one slot (or no keys: any node); keys in several slots are `CROSSSLOT`.
    Default,
    /// `request_policy:multi_shard`: split by slot, keys kept in their argument groups.
    MultiShard(ClusterMerge),
    /// `request_policy:all_shards`: the same command to every primary.
    AllShards(ClusterMerge),
    /// `SCAN`: every primary in turn.
    Scan,
    /// `CLUSTER ...`: answered as a Redis without cluster support answers.
    NotCluster,
    /// `SELECT`: database 0 only, as in Redis Cluster.
    SelectZeroOnly,
    /// `CLIENT SETNAME` (`set`) and `CLIENT GETNAME`: with a cluster upstream the client has
    /// no connection of its own to name, so respguard keeps the name.
    ClientName { set: bool },
    /// `SPUBLISH`, `SSUBSCRIBE`, `SUNSUBSCRIBE`: the shard channels (key specs flagged
    /// `not_key`) have a slot like keys, and Redis Cluster routes them by it.
    ShardChannels,
}

/// What a pub/sub command does with the channels it names (from argument 1 on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    None,
    /// `PUBLISH`, `SPUBLISH`: one channel, then the message.
    Publish,
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`: every argument is a channel (or pattern).
    Subscribe(ChannelKind),
    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`: the ones named, or all of the kind.
    Unsubscribe(ChannelKind),
}

/// What a subscription names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Channel,
    Pattern,
    Shard,
}

/// How the replies of a command sent to several cluster nodes become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterMerge {
    /// `MGET`: one array, elements in the order of the client's keys.
    KeysInOrder,
    /// `agg_sum`: integers added up (`DEL`, `EXISTS`, `DBSIZE`).
    Sum,
    /// `all_succeeded`: the first reply if every node succeeded, else the first error.
    AllSucceeded,
    /// Arrays concatenated (`KEYS`).
    Concat,
    /// The first non-nil reply (`RANDOMKEY`).
    AnyNonNil,
}

/// Everything respguard derives from a command beyond its table row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traits {
    pub special: Special,
    /// May run on a shared upstream connection without the client noticing (see
    /// [`shareable`]).
    pub shareable: bool,
    /// Exempt from the read timeout: flagged blocking, or `WAIT`/`WAITAOF`, which wait for
    /// replicas by design.
    pub blocking: bool,
    /// Queued by Redis inside MULTI (`WATCH` is answered at once with an error instead).
    pub queued_in_multi: bool,
    pub read: ReadKind,
    pub values: Values,
    /// The keys it creates take over an expiry from their source (`RENAME`, `RENAMENX`,
    /// `COPY`).
    pub inherits_expiry: bool,
    /// Has a `DB` option that writes into another database (`COPY`).
    pub other_db_option: bool,
    /// Redis parses all its options before looking at keys, so a malformed key list is
    /// Redis's own error (`XREAD`, `XREADGROUP`).
    pub parses_options_first: bool,
    /// Runs or installs code inside Redis (see [`CommandSpec::runs_code`]).
    pub runs_code: bool,
    pub deny_hint: DenyHint,
    pub cluster: ClusterTip,
    pub channels: Channels,
}

/// Unknown commands: nothing special, not blocking, never shared (what they do to the
/// connection cannot be known), no values the policy can locate.
pub const UNKNOWN: Traits = Traits {
    special: Special::None,
    shareable: false,
    blocking: false,
    queued_in_multi: true,
    read: ReadKind::None,
    values: Values::None,
    inherits_expiry: false,
    other_db_option: false,
    parses_options_first: false,
    runs_code: false,
    deny_hint: DenyHint::Denied,
    cluster: ClusterTip::Default,
    channels: Channels::None,
};

/// The traits of a row; [`UNKNOWN`] for a command without one.
pub fn traits(spec: Option<&'static CommandSpec>) -> &'static Traits {
    match spec {
        Some(spec) => by_index(spec.index()),
        None => &UNKNOWN,
    }
}

/// The traits of the row with this [`CommandSpec::index`]; [`UNKNOWN`] out of range.
pub fn by_index(index: usize) -> &'static Traits {
    static TABLE: OnceLock<Box<[Traits]>> = OnceLock::new();
    TABLE
        .get_or_init(|| CommandSpec::all().map(Traits::of).collect())
        .get(index)
        .unwrap_or(&UNKNOWN)
}

impl CommandSpec {
    /// This row's traits.
    pub fn traits(&self) -> &'static Traits {
        by_index(self.index())
    }
}

impl Traits {
    /// Derives a row's traits; [`traits`] serves them from a table built with this.
    pub fn of(spec: &CommandSpec) -> Traits {
        Traits {
            special: special_of(spec),
            shareable: shareable(spec),
            blocking: spec.is(CMD_BLOCKING) || matches!(spec.name, "WAIT" | "WAITAOF"),
            queued_in_multi: spec.name != "WATCH",
            read: read_kind_of(spec),
            values: values_of(spec),
            inherits_expiry: matches!(spec.name, "RENAME" | "RENAMENX" | "COPY"),
            other_db_option: spec.name == "COPY",
            parses_options_first: matches!(spec.name, "XREAD" | "XREADGROUP"),
            runs_code: matches!(
                spec.name,
                "EVAL"
                    | "EVAL_RO"
                    | "EVALSHA"
                    | "EVALSHA_RO"
                    | "FCALL"
                    | "FCALL_RO"
                    | "SCRIPT|LOAD"
                    | "FUNCTION|LOAD"
                    | "FUNCTION|RESTORE"
            ),
            deny_hint: deny_hint_of(spec),
            cluster: cluster_tip_of(spec),
            channels: channels_of(spec),
        }
    }
}

fn channels_of(spec: &CommandSpec) -> Channels {
    match spec.name {
        "PUBLISH" | "SPUBLISH" => Channels::Publish,
        "SUBSCRIBE" => Channels::Subscribe(ChannelKind::Channel),
        "PSUBSCRIBE" => Channels::Subscribe(ChannelKind::Pattern),
        "SSUBSCRIBE" => Channels::Subscribe(ChannelKind::Shard),
        "UNSUBSCRIBE" => Channels::Unsubscribe(ChannelKind::Channel),
        "PUNSUBSCRIBE" => Channels::Unsubscribe(ChannelKind::Pattern),
        "SUNSUBSCRIBE" => Channels::Unsubscribe(ChannelKind::Shard),
        _ => Channels::None,
    }
}

fn special_of(spec: &CommandSpec) -> Special {
    match spec.name {
        "MULTI" => Special::Multi,
        "EXEC" => Special::Exec,
        "DISCARD" => Special::Discard,
        "HELLO" => Special::Hello,
        "RESET" => Special::Reset,
        "QUIT" => Special::Quit,
        "MONITOR" => Special::Monitor,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" => Special::Pubsub,
        "WATCH" => Special::Watch,
        "UNWATCH" => Special::Unwatch,
        "SYNC" | "PSYNC" => Special::Replication,
        "CLIENT|REPLY" => Special::ClientReply,
        _ => Special::None,
    }
}

/// Whether a command may run on a shared connection without the client noticing.
///
/// Refused: commands of the connection, transaction, pub/sub and blocking ACL categories,
/// anything flagged blocking or not allowed in MULTI, replication and monitoring commands,
/// `WAIT` (it waits on the connection's own writes) and `DEBUG`. Unknown commands are never
/// shared either (their effect cannot be known; see [`UNKNOWN`]). `PING`, `ECHO`, `PUBLISH`,
/// `SPUBLISH` and `PUBSUB` are stateless and allowed. (`PING` behaves differently only in
/// subscribe mode or RESP3, and both pin.)
pub fn shareable(spec: &CommandSpec) -> bool {
    match spec.name {
        // Stateless despite their categories: clients ping on connect and as health checks.
        "PUBLISH" | "SPUBLISH" | "PING" | "ECHO" => return true,
        n if n.starts_with("PUBSUB") => return true,
        "WAIT" | "WAITAOF" | "MONITOR" | "SYNC" | "PSYNC" | "REPLCONF" | "FAILOVER" => {
            return false
        }
        n if n.starts_with("DEBUG") || n.starts_with("CLIENT") => return false,
        _ => {}
    }
    !(spec.is(CMD_BLOCKING)
        || spec.is(CMD_NO_MULTI)
        || spec.in_category(ACL_CONNECTION)
        || spec.in_category(ACL_TRANSACTION)
        || spec.in_category(ACL_PUBSUB)
        || spec.in_category(ACL_BLOCKING))
}

fn read_kind_of(spec: &CommandSpec) -> ReadKind {
    match spec.name {
        "GET" | "GETEX" | "GETDEL" | "HGET" | "JSON.GET" => ReadKind::Value,
        "MGET" => ReadKind::PerKey,
        "HMGET" => ReadKind::PerField,
        "HGETALL" | "LRANGE" | "SMEMBERS" | "ZRANGE" => ReadKind::Collection,
        "EXISTS" | "HEXISTS" => ReadKind::Count,
        _ => ReadKind::None,
    }
}

fn values_of(spec: &CommandSpec) -> Values {
    let single = |value, argc| Values::Single { value, argc };
    match spec.name {
        "SET" => single(2, Argc::AtLeast(3)),
        "SETNX" | "GETSET" => single(2, Argc::Exactly(3)),
        "SETEX" | "PSETEX" | "LSET" => single(3, Argc::Exactly(4)),
        "LINSERT" => single(4, Argc::Exactly(5)),
        "ZINCRBY" => single(3, Argc::Exactly(4)),
        "MSET" | "MSETNX" => Values::KeyValuePairs,
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" | "SADD" => Values::Elements,
        "HSET" => Values::HashFields {
            empty: HashEmpty::Zero,
            single_pair: false,
        },
        "HSETNX" => Values::HashFields {
            empty: HashEmpty::Zero,
            single_pair: true,
        },
        "HMSET" => Values::HashFields {
            empty: HashEmpty::Ok,
            single_pair: false,
        },
        "ZADD" => Values::SortedSetMembers,
        "XADD" => Values::StreamFields,
        "GEOADD" => Values::GeoMembers,
        "PUBLISH" | "SPUBLISH" => Values::Message,
        "APPEND" | "SETRANGE" | "SETBIT" => Values::PartialString { bitfield: false },
        "BITFIELD" => Values::PartialString { bitfield: true },
        "JSON.ARRAPPEND" | "JSON.ARRINSERT" | "JSON.MERGE" | "JSON.STRAPPEND" => {
            Values::UninspectedJson { per_triple: false }
        }
        "JSON.MSET" => Values::UninspectedJson { per_triple: true },
        "RESTORE" => Values::Restore,
        "JSON.SET" => Values::JsonDocument,
        _ => Values::None,
    }
}

fn cluster_tip_of(spec: &CommandSpec) -> ClusterTip {
    use ClusterMerge::*;
    use ClusterTip::*;
    match spec.name {
        "MGET" => MultiShard(KeysInOrder),
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => MultiShard(Sum),
        "MSET" => MultiShard(AllSucceeded),
        "DBSIZE" => AllShards(Sum),
        "FLUSHDB" | "FLUSHALL" | "SCRIPT|LOAD" | "SCRIPT|FLUSH" | "FUNCTION|LOAD"
        | "FUNCTION|DELETE" | "FUNCTION|FLUSH" | "FUNCTION|RESTORE" => AllShards(AllSucceeded),
        "KEYS" => AllShards(Concat),
        "RANDOMKEY" => AllShards(AnyNonNil),
        "SCAN" => Scan,
        "SELECT" => SelectZeroOnly,
        "SPUBLISH" | "SSUBSCRIBE" | "SUNSUBSCRIBE" => ShardChannels,
        "CLIENT|SETNAME" => ClientName { set: true },
        "CLIENT|GETNAME" => ClientName { set: false },
        n if n == "CLUSTER" || n.starts_with("CLUSTER|") => NotCluster,
        _ => Default,
    }
}

fn deny_hint_of(spec: &CommandSpec) -> DenyHint {
    let top = spec.name.split('|').next().unwrap_or(spec.name);
    match top {
        "KEYS" => DenyHint::UseScan,
        "FLUSHALL" | "FLUSHDB" => DenyHint::Flush,
        "DEBUG" | "CONFIG" | "SHUTDOWN" | "SAVE" | "BGSAVE" | "BGREWRITEAOF" | "REPLICAOF"
        | "SLAVEOF" | "MODULE" | "ACL" | "CLUSTER" | "FAILOVER" | "SWAPDB" | "MONITOR"
        | "CLIENT" | "SCRIPT" | "FUNCTION" | "LATENCY" | "SLOWLOG" | "MIGRATE" | "SYNC"
        | "PSYNC" | "REPLCONF" => DenyHint::Admin,
        _ => DenyHint::Denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup_name;

    fn of(name: &str) -> &'static Traits {
        traits(Some(lookup_name(name.as_bytes()).expect(name)))
    }

    #[test]
    fn every_name_the_traits_match_is_a_row_of_the_table() {
        // A misspelt name would silently give a command no traits at all. (`WAITAOF` is
        // matched too, for tables from Redis 7.2 on; this table is Redis 7.0's.)
        let names = [
            "MULTI",
            "EXEC",
            "DISCARD",
            "HELLO",
            "RESET",
            "QUIT",
            "MONITOR",
            "SUBSCRIBE",
            "PSUBSCRIBE",
            "SSUBSCRIBE",
            "UNSUBSCRIBE",
            "PUNSUBSCRIBE",
            "SUNSUBSCRIBE",
            "SYNC",
            "PSYNC",
            "CLIENT|REPLY",
            "PUBLISH",
            "SPUBLISH",
            "PING",
            "ECHO",
            "PUBSUB",
            "WAIT",
            "REPLCONF",
            "FAILOVER",
            "DEBUG",
            "CLIENT",
            "WATCH",
            "UNWATCH",
            "GET",
            "GETEX",
            "GETDEL",
            "HGET",
            "JSON.GET",
            "MGET",
            "HMGET",
            "HGETALL",
            "LRANGE",
            "SMEMBERS",
            "ZRANGE",
            "EXISTS",
            "HEXISTS",
            "SET",
            "SETNX",
            "GETSET",
            "SETEX",
            "PSETEX",
            "LSET",
            "LINSERT",
            "ZINCRBY",
            "MSET",
            "MSETNX",
            "LPUSH",
            "RPUSH",
            "LPUSHX",
            "RPUSHX",
            "SADD",
            "HSET",
            "HSETNX",
            "HMSET",
            "ZADD",
            "XADD",
            "GEOADD",
            "APPEND",
            "SETRANGE",
            "SETBIT",
            "BITFIELD",
            "JSON.ARRAPPEND",
            "JSON.ARRINSERT",
            "JSON.MERGE",
            "JSON.STRAPPEND",
            "JSON.MSET",
            "RESTORE",
            "JSON.SET",
            "RENAME",
            "RENAMENX",
            "COPY",
            "XREAD",
            "XREADGROUP",
            "KEYS",
            "FLUSHALL",
            "FLUSHDB",
            "CONFIG",
            "SHUTDOWN",
            "SAVE",
            "BGSAVE",
            "BGREWRITEAOF",
            "REPLICAOF",
            "SLAVEOF",
            "MODULE",
            "ACL",
            "CLUSTER",
            "SWAPDB",
            "SCRIPT",
            "FUNCTION",
            "LATENCY",
            "SLOWLOG",
            "MIGRATE",
            "EVAL",
            "EVAL_RO",
            "EVALSHA",
            "EVALSHA_RO",
            "FCALL",
            "FCALL_RO",
            "SCRIPT|LOAD",
            "FUNCTION|LOAD",
            "FUNCTION|RESTORE",
        ];
        for name in names {
            assert!(lookup_name(name.as_bytes()).is_some(), "{name} has no row");
        }
    }

    #[test]
    fn every_row_has_its_derived_traits_in_the_table() {
        let mut rows = 0;
        for spec in CommandSpec::all() {
            assert_eq!(*traits(Some(spec)), Traits::of(spec), "{}", spec.name);
            rows += 1;
        }
        assert_eq!(rows, CommandSpec::count());
        assert_eq!(*traits(None), UNKNOWN);
        assert_eq!(*by_index(CommandSpec::count()), UNKNOWN);
    }

    #[test]
    fn pubsub_commands_say_what_they_do_with_their_channels() {
        assert_eq!(of("PUBLISH").channels, Channels::Publish);
        assert_eq!(of("spublish").channels, Channels::Publish);
        assert_eq!(
            of("PSUBSCRIBE").channels,
            Channels::Subscribe(ChannelKind::Pattern)
        );
        assert_eq!(
            of("SSUBSCRIBE").channels,
            Channels::Subscribe(ChannelKind::Shard)
        );
        assert_eq!(
            of("UNSUBSCRIBE").channels,
            Channels::Unsubscribe(ChannelKind::Channel)
        );
        assert_eq!(of("PUBSUB|CHANNELS").channels, Channels::None);
        assert_eq!(of("GET").channels, Channels::None);
    }

    #[test]
    fn session_specials_follow_the_commands_that_change_reply_pairing() {
        assert_eq!(of("MULTI").special, Special::Multi);
        assert_eq!(of("exec").special, Special::Exec);
        assert_eq!(of("DISCARD").special, Special::Discard);
        assert_eq!(of("HELLO").special, Special::Hello);
        assert_eq!(of("RESET").special, Special::Reset);
        assert_eq!(of("QUIT").special, Special::Quit);
        assert_eq!(of("MONITOR").special, Special::Monitor);
        for name in [
            "SUBSCRIBE",
            "PSUBSCRIBE",
            "SSUBSCRIBE",
            "UNSUBSCRIBE",
            "PUNSUBSCRIBE",
        ] {
            assert_eq!(of(name).special, Special::Pubsub, "{name}");
        }
        assert_eq!(of("SUNSUBSCRIBE").special, Special::Pubsub);
        assert_eq!(of("SYNC").special, Special::Replication);
        assert_eq!(of("PSYNC").special, Special::Replication);
        assert_eq!(of("CLIENT|REPLY").special, Special::ClientReply);
        assert_eq!(of("CLIENT|ID").special, Special::None);
        assert_eq!(of("GET").special, Special::None);
        assert_eq!(of("PUBLISH").special, Special::None);
    }

    #[test]
    fn stateless_commands_share_and_connection_state_pins() {
        for name in [
            "GET",
            "SET",
            "MGET",
            "EVAL",
            "PUBLISH",
            "SPUBLISH",
            "PING",
            "ECHO",
            "PUBSUB",
            "PUBSUB|CHANNELS",
            "DEL",
            "HSET",
        ] {
            assert!(of(name).shareable, "{name} should be shareable");
        }
        for name in [
            "SELECT",
            "AUTH",
            "HELLO",
            "MULTI",
            "EXEC",
            "WATCH",
            "SUBSCRIBE",
            "BLPOP",
            "WAIT",
            "MONITOR",
            "SYNC",
            "PSYNC",
            "REPLCONF",
            "FAILOVER",
            "DEBUG",
            "CLIENT",
            "CLIENT|SETNAME",
            "CLIENT|ID",
            "CLIENT|REPLY",
            "RESET",
            "QUIT",
        ] {
            assert!(!of(name).shareable, "{name} should pin");
        }
        assert!(!traits(None).shareable);
        for spec in CommandSpec::all() {
            if spec.is(CMD_BLOCKING) {
                assert!(!traits(Some(spec)).shareable, "{}", spec.name);
            }
        }
    }

    #[test]
    fn blocking_commands_and_replica_waits_are_exempt_from_the_read_timeout() {
        for name in ["BLPOP", "BRPOP", "BLMOVE", "BZPOPMIN", "XREAD", "WAIT"] {
            assert!(of(name).blocking, "{name}");
        }
        for name in ["GET", "SET", "EVAL", "CLIENT|PAUSE"] {
            assert!(!of(name).blocking, "{name}");
        }
        assert!(!traits(None).blocking);
    }

    #[test]
    fn read_kinds_say_how_replies_count_as_hits_and_misses() {
        for name in ["GET", "GETEX", "GETDEL", "HGET", "JSON.GET"] {
            assert_eq!(of(name).read, ReadKind::Value, "{name}");
        }
        assert_eq!(of("MGET").read, ReadKind::PerKey);
        assert_eq!(of("HMGET").read, ReadKind::PerField);
        for name in ["HGETALL", "LRANGE", "SMEMBERS", "ZRANGE"] {
            assert_eq!(of(name).read, ReadKind::Collection, "{name}");
        }
        assert_eq!(of("EXISTS").read, ReadKind::Count);
        assert_eq!(of("HEXISTS").read, ReadKind::Count);
        for name in ["SET", "SCAN", "GETRANGE", "ZRANGEBYSCORE"] {
            assert_eq!(of(name).read, ReadKind::None, "{name}");
        }
    }

    #[test]
    fn value_positions_cover_every_write_that_stores_client_values() {
        assert_eq!(
            of("SET").values,
            Values::Single {
                value: 2,
                argc: Argc::AtLeast(3)
            }
        );
        assert_eq!(
            of("LINSERT").values,
            Values::Single {
                value: 4,
                argc: Argc::Exactly(5)
            }
        );
        assert_eq!(
            of("HMSET").values,
            Values::HashFields {
                empty: HashEmpty::Ok,
                single_pair: false
            }
        );
        assert_eq!(
            of("HSETNX").values,
            Values::HashFields {
                empty: HashEmpty::Zero,
                single_pair: true
            }
        );
        assert_eq!(of("SPUBLISH").values, Values::Message);
        assert_eq!(
            of("BITFIELD").values,
            Values::PartialString { bitfield: true }
        );
        assert_eq!(
            of("JSON.MSET").values,
            Values::UninspectedJson { per_triple: true }
        );
        assert_eq!(of("GET").values, Values::None);
        assert!(Argc::Exactly(3).admits(3) && !Argc::Exactly(3).admits(4));
        assert!(Argc::AtLeast(3).admits(4) && !Argc::AtLeast(3).admits(2));
        // Every row that stores a value the stage inspects is a write or a publish.
        for spec in CommandSpec::all() {
            if traits(Some(spec)).values != Values::None {
                assert!(
                    spec.is(super::super::CMD_WRITE) || spec.is(super::super::CMD_PUBSUB),
                    "{}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn expiry_inheritance_options_and_denial_hints_follow_the_commands() {
        assert!(of("RENAME").inherits_expiry && of("RENAMENX").inherits_expiry);
        assert!(of("COPY").inherits_expiry && of("COPY").other_db_option);
        assert!(!of("RENAME").other_db_option && !of("SET").inherits_expiry);
        assert!(of("XREAD").parses_options_first && of("XREADGROUP").parses_options_first);
        assert!(!of("MGET").parses_options_first);
        for name in [
            "EVAL",
            "EVAL_RO",
            "EVALSHA",
            "EVALSHA_RO",
            "FCALL",
            "FCALL_RO",
            "SCRIPT|LOAD",
            "FUNCTION|LOAD",
            "FUNCTION|RESTORE",
        ] {
            assert!(of(name).runs_code && lookup_name(name.as_bytes()).unwrap().runs_code());
        }
        for name in ["SCRIPT|FLUSH", "FUNCTION|LIST", "GET", "SCRIPT"] {
            assert!(!of(name).runs_code, "{name}");
        }
        assert!(!of("WATCH").queued_in_multi && of("GET").queued_in_multi);
        assert_eq!(of("KEYS").deny_hint, DenyHint::UseScan);
        assert_eq!(of("FLUSHDB").deny_hint, DenyHint::Flush);
        assert_eq!(of("CONFIG|SET").deny_hint, DenyHint::Admin);
        assert_eq!(of("CLIENT|KILL").deny_hint, DenyHint::Admin);
        assert_eq!(of("GET").deny_hint, DenyHint::Denied);
    }
}
