//! A Redis Cluster behind respguard answers like one Redis: commands route by slot, multi-key
//! commands split across slots are merged in the client's order, atomic ones across slots
//! get Redis Cluster's `CROSSSLOT`, and whole-keyspace commands cover every primary.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::{
    cluster_proxy, cluster_proxy_tls, example_yaml, proxy, raw_proxy, show, Pki, Raw, RedisCluster,
    RedisServer,
};

const PERMISSIVE: &str = "policy:\n  unknown_keys: allow\n";

/// Commands of every family, keys in the example policy's namespaces and spread over slots.
const FAMILIES: &[&[&str]] = &[
    &["PING"],
    &["ECHO", "hello"],
    &["SET", "analytics:page:1", "v1"],
    &["SET", "analytics:page:2", "v2"],
    &[
        "MSET",
        "analytics:page:3",
        "a",
        "analytics:page:4",
        "b",
        "analytics:page:5",
        "c",
    ],
    &[
        "MGET",
        "analytics:page:1",
        "analytics:page:2",
        "analytics:page:3",
        "analytics:page:4",
        "analytics:page:5",
        "analytics:page:missing",
        "analytics:page:1",
    ],
    &[
        "EXISTS",
        "analytics:page:1",
        "analytics:page:2",
        "analytics:page:missing",
        "analytics:page:1",
    ],
    &[
        "TOUCH",
        "analytics:page:1",
        "analytics:page:4",
        "analytics:page:missing",
    ],
    &[
        "DEL",
        "analytics:page:1",
        "analytics:page:3",
        "analytics:page:missing",
    ],
    &["UNLINK", "analytics:page:2"],
    &[
        "MGET",
        "analytics:page:1",
        "analytics:page:2",
        "analytics:page:4",
        "analytics:page:5",
    ],
    &["INCR", "rate_limit:login:1"],
    &["INCRBY", "rate_limit:login:1", "41"],
    &["GET", "rate_limit:login:1"],
    &["HSET", "customer:1", "name", "ada", "plan", "pro"],
    &["HGET", "customer:1", "plan"],
    &["HGETALL", "customer:1"],
    &["RPUSH", "notification_queue:1:email", "a", "b", "c"],
    &["LRANGE", "notification_queue:1:email", "0", "-1"],
    &["LPOP", "notification_queue:1:email"],
    &["SADD", "analytics:tags:1", "x", "y"],
    &["SCARD", "analytics:tags:1"],
    &["SISMEMBER", "analytics:tags:1", "y"],
    &["ZADD", "dashboard:board:1", "1", "a", "2", "b"],
    &["ZRANGE", "dashboard:board:1", "0", "-1", "WITHSCORES"],
    &[
        "SET",
        "user_profile:7",
        r#"{"name":"ada","password":"hunter2"}"#,
    ],
    &["GET", "user_profile:7"],
    &["SET", "not_a_namespace", "v"],
    &["GET", "not_a_namespace"],
    &["EVAL", "return 1", "0"],
    &["KEYS", "*"],
    &["FLUSHDB"],
    &["CLUSTER", "SLOTS"],
    &["CLUSTER", "SHARDS"],
    &["CLUSTER", "NODES"],
    &["SELECT", "0"],
    &["GET"],
    &["NOSUCHCOMMAND", "x"],
    &["DBSIZE"],
];

async fn call(r: &mut Raw, args: &[&str]) -> Vec<u8> {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    r.call(&a).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_family_answers_as_on_one_redis_with_the_example_policy() {
    let cluster = RedisCluster::start();
    let single = RedisServer::start();
    let yaml = example_yaml();
    let through_cluster = cluster_proxy(&yaml, &cluster).await;
    let through_single = proxy(&yaml, &single.url()).await;
    let mut c = raw_proxy(&through_cluster).await;
    let mut s = raw_proxy(&through_single).await;
    for cmd in FAMILIES {
        let want = call(&mut s, cmd).await;
        let got = call(&mut c, cmd).await;
        assert_resp!(got, want, "{cmd:?}");
    }
    // The same, pipelined: one batch of every command, replies in order.
    let mut batch = Vec::new();
    for cmd in FAMILIES {
        let a: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
        let mut b = bytes::BytesMut::new();
        respguard::codec::encode_command(&mut b, a.into_iter());
        batch.extend_from_slice(&b);
    }
    c.send(&batch).await;
    s.send(&batch).await;
    for cmd in FAMILIES {
        let want = s.read().await;
        let got = c.read().await;
        assert_resp!(got, want, "pipelined {cmd:?}");
    }
    // The policy's TTL reached the node of the key.
    let ttl = c.ttl(b"analytics:page:4").await;
    assert!((1790..=1800).contains(&ttl), "TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_commands_across_slots_get_crossslot_and_hash_tags_keep_keys_together() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let crossslot = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec();
    for cmd in [
        &["MSETNX", "a", "1", "b", "2"][..],
        &["RENAME", "a", "b"],
        &["SMOVE", "a", "b", "m"],
        &["LMOVE", "a", "b", "LEFT", "RIGHT"],
        &["SINTERSTORE", "a", "b", "c"],
        &["SINTER", "a", "b"],
        &["ZUNIONSTORE", "a", "2", "b", "c"],
        &["EVAL", "return redis.call('get', KEYS[1])", "2", "a", "b"],
    ] {
        assert_resp!(call(&mut c, cmd).await, crossslot, "{cmd:?}");
    }
    // The same commands with one hash tag run on the tag's node.
    assert_resp!(
        call(&mut c, &["MSETNX", "{u}a", "1", "{u}b", "2"]).await,
        b":1\r\n".to_vec()
    );
    assert_resp!(
        call(&mut c, &["RENAME", "{u}a", "{u}c"]).await,
        b"+OK\r\n".to_vec()
    );
    assert_resp!(
        call(&mut c, &["MGET", "{u}a", "{u}b", "{u}c"]).await,
        b"*3\r\n$-1\r\n$1\r\n2\r\n$1\r\n1\r\n".to_vec()
    );
    assert_resp!(
        call(
            &mut c,
            &[
                "EVAL",
                "return redis.call('get', KEYS[2])",
                "2",
                "{u}b",
                "{u}c"
            ]
        )
        .await,
        b"$1\r\n1\r\n".to_vec()
    );
    // A script loaded through the proxy runs by digest on any key's node.
    let sha = call(
        &mut c,
        &["SCRIPT", "LOAD", "return redis.call('get', KEYS[1])"],
    )
    .await;
    let sha = String::from_utf8_lossy(&sha[5..sha.len() - 2]).into_owned();
    for key in ["{u}b", "k1", "k2", "k3", "k4"] {
        call(&mut c, &["SET", key, "x"]).await;
        let got = call(&mut c, &["EVALSHA", &sha, "1", key]).await;
        assert!(
            got.starts_with(b"$"),
            "EVALSHA on {key}'s node: {}",
            show(&got)
        );
    }
    // Nothing crossed: the split commands still work across slots.
    assert_resp!(
        call(&mut c, &["DEL", "k1", "k2", "k3", "k4", "nope"]).await,
        b":4\r\n".to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_walks_every_primary_and_dbsize_sums_them() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let keys: Vec<String> = (0..300).map(|i| format!("scan:{i}")).collect();
    let mut mset = vec!["MSET"];
    for k in &keys {
        mset.push(k);
        mset.push("v");
    }
    assert_resp!(call(&mut c, &mset).await, b"+OK\r\n".to_vec());
    assert_resp!(call(&mut c, &["DBSIZE"]).await, b":300\r\n".to_vec());
    let mut seen = HashSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let r = call(&mut c, &["SCAN", &cursor, "COUNT", "40"]).await;
        let text = String::from_utf8_lossy(&r).into_owned();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "*2", "{text}");
        cursor = lines[2].to_string();
        for pair in lines[4..].chunks(2) {
            if let [_, k] = pair {
                if !k.is_empty() {
                    seen.insert(k.to_string());
                }
            }
        }
        rounds += 1;
        assert!(rounds < 200, "SCAN never ended");
        if cursor == "0" {
            break;
        }
    }
    let want: HashSet<String> = keys.into_iter().collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_answer_as_a_single_node_and_per_connection_commands_are_refused_clearly()
{
    let cluster = RedisCluster::start();
    let single = RedisServer::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let mut d = single.raw().await;
    for cmd in [
        &["CLUSTER", "SLOTS"][..],
        &["CLUSTER", "SHARDS"],
        &["CLUSTER", "INFO"],
    ] {
        assert_resp!(call(&mut c, cmd).await, call(&mut d, cmd).await, "{cmd:?}");
    }
    assert_resp!(
        call(&mut c, &["SELECT", "1"]).await,
        b"-ERR SELECT is not allowed in cluster mode\r\n".to_vec()
    );
    // What would apply to one node's connection only is refused, saying why.
    for (cmd, name) in [
        (&["MONITOR"][..], "MONITOR"),
        (&["CLIENT", "ID"], "CLIENT|ID"),
        (&["CLIENT", "KILL", "ID", "1"], "CLIENT|KILL"),
        (&["CLIENT", "TRACKING", "on"], "CLIENT|TRACKING"),
    ] {
        let r = call(&mut c, cmd).await;
        let text = String::from_utf8_lossy(&r);
        assert!(
            text.starts_with(&format!(
                "-ERR '{name}' is not supported with a Redis Cluster upstream"
            )),
            "{cmd:?}: {text}"
        );
    }
    // RESP3 is refused the way a server without it refuses, so clients fall back to RESP2.
    let r = call(&mut c, &["HELLO", "3"]).await;
    assert!(r.starts_with(b"-NOPROTO "), "{}", show(&r));
    assert!(call(&mut c, &["HELLO", "2"]).await.starts_with(b"*"));
    // Replies switched off and on again by the proxy itself.
    c.send(
        b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n*2\r\n$4\r\nECHO\r\n$6\r\nhidden\r\n",
    )
    .await;
    assert_resp!(
        call(&mut c, &["CLIENT", "REPLY", "ON"]).await,
        b"+OK\r\n".to_vec()
    );
    // The client's name is kept by respguard and answered as Redis answers.
    for cmd in [
        &["CLIENT", "GETNAME"][..],
        &["CLIENT", "SETNAME", "app 1"],
        &["CLIENT", "SETNAME", "app-1"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME"],
        &["CLIENT", "GETNAME", "x"],
        &["CLIENT", "SETNAME", ""],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "app-2"],
        &["RESET"],
        &["CLIENT", "GETNAME"],
    ] {
        assert_resp!(call(&mut c, cmd).await, call(&mut d, cmd).await, "{cmd:?}");
    }
    // The connection goes on.
    assert_resp!(call(&mut c, &["PING"]).await, b"+PONG\r\n".to_vec());
    // A real client library works against the proxy in single-node mode.
    let client = redis::Client::open(common::proxy_url(&p)).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("MSET")
        .arg("lib:a")
        .arg(1)
        .arg("lib:b")
        .arg(2)
        .query_async(&mut con)
        .await
        .expect("MSET");
    let got: Vec<Option<i64>> = redis::cmd("MGET")
        .arg("lib:a")
        .arg("lib:b")
        .arg("lib:c")
        .query_async(&mut con)
        .await
        .expect("MGET");
    assert_eq!(got, vec![Some(1), Some(2), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_rediss_seeds_routes_over_tls() {
    let pki = Pki::new("cluster");
    let server = pki.issue("node", &["127.0.0.1"]);
    let cluster = RedisCluster::start_tls(&pki, &server);
    let p = cluster_proxy_tls(PERMISSIVE, &cluster, &pki).await;
    let mut c = raw_proxy(&p).await;
    // Keys on every primary, split and merged, over the nodes' TLS ports only (the topology
    // names them as such to a TLS client; a plain connection there would fail).
    let mut mset = vec!["MSET"];
    let keys: Vec<String> = (0..30).map(|i| format!("tls:{i}")).collect();
    for k in &keys {
        mset.push(k);
        mset.push(k);
    }
    assert_resp!(call(&mut c, &mset).await, b"+OK\r\n".to_vec());
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    let want: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    assert_resp!(call(&mut c, &mget).await, common::bulk_array(&want));
    // A transaction on a connection of its own, over TLS too.
    c.send(b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$6\r\n{t}tls\r\n*1\r\n$4\r\nEXEC\r\n")
        .await;
    assert_resp!(c.reply().await, b"+OK\r\n".to_vec());
    assert_resp!(c.reply().await, b"+QUEUED\r\n".to_vec());
    assert_resp!(c.reply().await, b"*1\r\n:1\r\n".to_vec());
    // What respguard wrote is on the nodes, read over their plain ports.
    let mut found = 0;
    for node in cluster.primaries() {
        for k in &keys {
            if common::cli(node.port, &["GET", k]).is_some_and(|v| v.trim() == k) {
                found += 1;
            }
        }
    }
    assert_eq!(found, keys.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_before_respguard_answers_for_the_cluster() {
    let cluster = RedisCluster::start();
    let single = RedisServer::start();
    let yaml = "policy:\n  unknown_keys: allow\n  denied_commands: [\"CLIENT|SETNAME\", MONITOR]\n";
    let through_cluster = cluster_proxy(yaml, &cluster).await;
    let through_single = proxy(yaml, &single.url()).await;
    let mut c = raw_proxy(&through_cluster).await;
    let mut s = raw_proxy(&through_single).await;
    // The policy's refusal, as on one Redis; the name the refused command carried is not set.
    for cmd in [
        &["CLIENT", "SETNAME", "app"][..],
        &["CLIENT", "GETNAME"],
        &["MONITOR"],
    ] {
        assert_resp!(call(&mut c, cmd).await, call(&mut s, cmd).await, "{cmd:?}");
    }
}
