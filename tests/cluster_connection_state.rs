//! Clients that need connection state with a Redis Cluster behind respguard: transactions,
//! WATCH, blocking commands and pub/sub run on a connection of their own to the one node the
//! state belongs to, answer as that node answers, never show `MOVED`/`ASK`, and the client
//! routes by slot again once the state is gone.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{cli, cluster_proxy, example_yaml, raw_proxy, show, NodeInfo, Raw, RedisCluster};
use respguard::upstream::cluster::route::slot;

const PERMISSIVE: &str = "policy:\n  unknown_keys: allow\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";

async fn call(r: &mut Raw, args: &[&str]) -> Vec<u8> {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    r.call(&a).await
}

/// Sends every command at once; their replies in order.
async fn pipeline(r: &mut Raw, cmds: &[&[&str]]) -> Vec<Vec<u8>> {
    let mut batch = Vec::new();
    for c in cmds {
        let a: Vec<&[u8]> = c.iter().map(|s| s.as_bytes()).collect();
        let mut b = bytes::BytesMut::new();
        respguard::codec::encode_command(&mut b, a.into_iter());
        batch.extend_from_slice(&b);
    }
    r.send(&batch).await;
    let mut out = Vec::new();
    for _ in cmds {
        out.push(r.reply().await);
    }
    out
}

/// A GET of a key on every primary answers (nil) through `c`: the client routes by slot.
async fn routes_everywhere(cluster: &RedisCluster, c: &mut Raw) {
    for (i, node) in cluster.primaries().iter().enumerate() {
        let key = cluster.key_on(node, &format!("everywhere{i}:"));
        let started = Instant::now();
        let got = call(c, &["GET", &key]).await;
        assert_resp!(got, b"$-1\r\n".to_vec(), "GET {key} on {}", node.port);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "GET {key} took {:?}",
            started.elapsed()
        );
    }
}

async fn node_raw(node: &NodeInfo) -> Raw {
    Raw::connect(node.addr()).await
}

fn blocked_clients(port: u16) -> usize {
    cli(port, &["INFO", "clients"])
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("blocked_clients:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The primary where a client is in MULTI (`flags=x` in `CLIENT LIST`).
fn transaction_node(primaries: &[NodeInfo]) -> &NodeInfo {
    primaries
        .iter()
        .find(|n| {
            cli(n.port, &["CLIENT", "LIST"])
                .is_some_and(|t| t.lines().any(|l| l.contains(" flags=x ")))
        })
        .expect("a primary holds the transaction")
}

async fn wait_blocked(port: u16) {
    let ok = common::eventually(Duration::from_secs(20), || async move {
        blocked_clients(port) >= 1
    })
    .await;
    assert!(ok, "no client ever blocked on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_one_slot_answers_as_its_node_and_keys_of_another_slot_abort_it() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let primaries = cluster.primaries();
    // The same transaction straight to the node of its keys, and through respguard on other
    // keys (empty alike): the same bytes.
    let tx = |t: &str| -> Vec<Vec<String>> {
        vec![
            vec!["MULTI".into()],
            vec!["SET".into(), format!("{{{t}}}a"), "1".into()],
            vec!["INCR".into(), format!("{{{t}}}b")],
            vec!["LPUSH".into(), format!("{{{t}}}l"), "x".into(), "y".into()],
            vec![
                "MGET".into(),
                format!("{{{t}}}a"),
                format!("{{{t}}}b"),
                format!("{{{t}}}z"),
            ],
            vec!["PING".into()],
            vec!["EXEC".into()],
        ]
    };
    let owner_of = |t: &str| {
        primaries
            .iter()
            .find(|n| n.serves(slot(t.as_bytes())))
            .cloned()
            .expect("an owner")
    };
    let mut direct = node_raw(&owner_of("direct")).await;
    let mut want = Vec::new();
    for cmd in tx("direct") {
        let a: Vec<&str> = cmd.iter().map(String::as_str).collect();
        want.push(call(&mut direct, &a).await);
    }
    assert_eq!(want[0], b"+OK\r\n", "{}", show(&want[0]));
    for tag in ["proxied", "other"] {
        for (i, cmd) in tx(tag).iter().enumerate() {
            let a: Vec<&str> = cmd.iter().map(String::as_str).collect();
            assert_resp!(call(&mut c, &a).await, want[i], "{tag}: {a:?}");
        }
    }
    // Pipelined in one write, as client libraries send a transaction.
    let t = tx("piped");
    let cmds: Vec<Vec<&str>> = t
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    let got = pipeline(&mut c, &refs).await;
    for (g, w) in got.iter().zip(&want) {
        assert_resp!(g, w, "pipelined");
    }
    // Commands pipelined behind EXEC wait for it, then route by slot again.
    let keys: Vec<String> = primaries
        .iter()
        .enumerate()
        .map(|(i, n)| cluster.key_on(n, &format!("after{i}:")))
        .collect();
    let mut cmds: Vec<Vec<&str>> = vec![vec!["MULTI"], vec!["SET", "{piped}x", "1"], vec!["EXEC"]];
    cmds.extend(keys.iter().map(|k| vec!["SET", k.as_str(), "after"]));
    let refs: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    let got = pipeline(&mut c, &refs).await;
    assert_resp!(got[2], b"*1\r\n+OK\r\n".to_vec());
    for (g, k) in got[3..].iter().zip(&keys) {
        assert_resp!(g, b"+OK\r\n".to_vec(), "SET {k} after EXEC");
    }

    // A command of another slot queued: what a node answers to a queued CROSSSLOT command,
    // byte for byte, and EXEC aborts.
    let want = [
        call(&mut direct, &["MULTI"]).await,
        call(&mut direct, &["SET", "{direct}c", "1"]).await,
        call(
            &mut direct,
            &["MSET", "{direct}d", "1", "{elsewhere}d", "2"],
        )
        .await,
        call(&mut direct, &["EXEC"]).await,
    ];
    assert_resp!(want[2], CROSSSLOT.to_vec());
    assert_resp!(want[3], EXECABORT.to_vec());
    let got = [
        call(&mut c, &["MULTI"]).await,
        call(&mut c, &["SET", "{x}c", "1"]).await,
        call(&mut c, &["SET", "{y}c", "2"]).await,
        call(&mut c, &["EXEC"]).await,
    ];
    assert_resp!(got.concat(), want.concat());
    let got = pipeline(
        &mut c,
        &[
            &["MULTI"],
            &["SET", "{x}c", "1"],
            &["MSET", "{x}d", "1", "{y}d", "2"],
            &["EXEC"],
        ],
    )
    .await;
    assert_resp!(got.concat(), want.concat());
    // Nothing ran.
    assert_resp!(
        call(&mut c, &["MGET", "{x}c", "{y}c", "{x}d", "{y}d"]).await,
        b"*4\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n".to_vec()
    );
    // Back on the router: every primary's keys answer.
    routes_everywhere(&cluster, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_another_clients_write_and_a_keyless_start_moves_to_the_first_keys_node() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let mut other = raw_proxy(&p).await;
    assert_resp!(
        call(&mut c, &["SET", "{w}k", "0"]).await,
        b"+OK\r\n".to_vec()
    );
    assert_resp!(call(&mut c, &["WATCH", "{w}k"]).await, b"+OK\r\n".to_vec());
    assert_resp!(
        call(&mut c, &["GET", "{w}k"]).await,
        b"$1\r\n0\r\n".to_vec()
    );
    // A key of another slot while watching: Redis Cluster's CROSSSLOT, nothing else changes.
    assert_resp!(
        call(&mut c, &["GET", "{elsewhere}k"]).await,
        CROSSSLOT.to_vec()
    );
    assert_resp!(
        call(&mut other, &["SET", "{w}k", "changed"]).await,
        b"+OK\r\n".to_vec()
    );
    assert_resp!(call(&mut c, &["MULTI"]).await, b"+OK\r\n".to_vec());
    assert_resp!(
        call(&mut c, &["SET", "{w}k", "mine"]).await,
        b"+QUEUED\r\n".to_vec()
    );
    assert_resp!(call(&mut c, &["EXEC"]).await, b"*-1\r\n".to_vec());
    assert_resp!(
        call(&mut c, &["GET", "{w}k"]).await,
        b"$7\r\nchanged\r\n".to_vec()
    );
    // Without a write in between, the watched transaction runs.
    let got = pipeline(
        &mut c,
        &[
            &["WATCH", "{w}k"],
            &["MULTI"],
            &["SET", "{w}k", "mine"],
            &["EXEC"],
        ],
    )
    .await;
    assert_resp!(got[3], b"*1\r\n+OK\r\n".to_vec());
    routes_everywhere(&cluster, &mut c).await;

    // A transaction whose first commands have no key starts on any primary and moves to the
    // node of its first key, here always another one.
    for i in 0..3 {
        assert_resp!(call(&mut c, &["MULTI"]).await, b"+OK\r\n".to_vec());
        assert_resp!(call(&mut c, &["PING"]).await, b"+QUEUED\r\n".to_vec());
        assert_resp!(call(&mut c, &["ECHO", "e"]).await, b"+QUEUED\r\n".to_vec());
        let primaries = cluster.primaries();
        let here = transaction_node(&primaries);
        let node = primaries
            .iter()
            .find(|n| n.port != here.port)
            .expect("another primary");
        let key = cluster.key_on(node, &format!("late{i}:"));
        assert_resp!(
            call(&mut c, &["SET", &key, "v"]).await,
            b"+QUEUED\r\n".to_vec()
        );
        assert_resp!(
            call(&mut c, &["EXEC"]).await,
            b"*3\r\n+PONG\r\n$1\r\ne\r\n+OK\r\n".to_vec(),
            "{key}"
        );
        assert_resp!(
            call(&mut node_raw(node).await, &["GET", &key]).await,
            b"$1\r\nv\r\n".to_vec()
        );
    }
    // A keyless transaction runs on any primary.
    let got = pipeline(&mut c, &[&["MULTI"], &["PING"], &["EXEC"]]).await;
    assert_resp!(got[2], b"*1\r\n+PONG\r\n".to_vec());
    routes_everywhere(&cluster, &mut c).await;
    // RESET ends a transaction, a WATCH and subscriptions alike: the client is clean and back
    // on its router.
    for state in [
        &[
            &["WATCH", "{w}k"][..],
            &["MULTI"],
            &["SET", "{w}k", "reset"],
        ][..],
        &[&["SUBSCRIBE", "a", "b"]],
        &[&["SSUBSCRIBE", "{w}chan"]],
    ] {
        let mut cmds = state.to_vec();
        cmds.push(&["RESET"]);
        c.send(&common::encode_many(
            &cmds
                .iter()
                .map(|c| c.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
                .iter()
                .map(Vec::as_slice)
                .collect::<Vec<_>>(),
        ))
        .await;
        let mut last = Vec::new();
        while last != b"+RESET\r\n" {
            last = c.reply().await;
        }
        routes_everywhere(&cluster, &mut c).await;
    }
    assert_resp!(
        call(&mut c, &["GET", "{w}k"]).await,
        b"$4\r\nmine\r\n".to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policys_ttl_still_reaches_a_key_written_in_a_cluster_transaction() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(&example_yaml(), &cluster).await;
    let mut c = raw_proxy(&p).await;
    let got = pipeline(
        &mut c,
        &[
            &["MULTI"],
            &["SET", "analytics:page:tx", "v"],
            &["GET", "analytics:page:tx"],
            &["EXEC"],
        ],
    )
    .await;
    assert_resp!(got[3], b"*2\r\n+OK\r\n$1\r\nv\r\n".to_vec());
    let ttl = c.ttl(b"analytics:page:tx").await;
    assert!((1790..=1800).contains(&ttl), "TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_a_transaction_gives_a_clear_error_never_moved() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let primaries = cluster.primaries();
    // Moved between queueing and EXEC: the node discards the transaction.
    let from = &primaries[0];
    let to = &primaries[1];
    let key = cluster.key_on(from, "moving:");
    assert_resp!(call(&mut c, &["MULTI"]).await, b"+OK\r\n".to_vec());
    assert_resp!(
        call(&mut c, &["SET", &key, "v"]).await,
        b"+QUEUED\r\n".to_vec()
    );
    cluster.give_slot(slot(key.as_bytes()), to);
    let got = call(&mut c, &["EXEC"]).await;
    let text = show(&got);
    assert!(
        text.starts_with("-TRYAGAIN ") && text.contains("not run") && !text.contains("MOVED"),
        "{text}"
    );
    assert_resp!(
        call(&mut node_raw(to).await, &["EXISTS", &key]).await,
        b":0\r\n".to_vec()
    );
    // The client is back on its router, which finds the slot's new owner.
    assert_resp!(call(&mut c, &["SET", &key, "w"]).await, b"+OK\r\n".to_vec());
    assert_resp!(
        call(&mut node_raw(to).await, &["GET", &key]).await,
        b"$1\r\nw\r\n".to_vec()
    );

    // Moved while queueing: the queued command's error, then EXECABORT.
    let key = cluster.key_on(from, "queued:");
    assert_resp!(call(&mut c, &["WATCH", &key]).await, b"+OK\r\n".to_vec());
    assert_resp!(call(&mut c, &["MULTI"]).await, b"+OK\r\n".to_vec());
    cluster.give_slot(slot(key.as_bytes()), to);
    let got = call(&mut c, &["SET", &key, "v"]).await;
    let text = show(&got);
    assert!(
        text.starts_with("-TRYAGAIN ")
            && text.contains("EXEC will discard")
            && !text.contains("MOVED"),
        "{text}"
    );
    assert_resp!(call(&mut c, &["EXEC"]).await, EXECABORT.to_vec());
    assert_resp!(call(&mut c, &["GET", &key]).await, b"$-1\r\n".to_vec());
    routes_everywhere(&cluster, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_delays_nobody_and_is_unblocked_by_another_clients_push() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let primaries = cluster.primaries();
    let node = &primaries[2];
    let queue = cluster.key_on(node, "queue:");
    let mut blocked = raw_proxy(&p).await;
    let mut pusher = raw_proxy(&p).await;
    let mut reader = raw_proxy(&p).await;
    blocked.cmd(&[b"BLPOP", queue.as_bytes(), b"0"]).await;
    wait_blocked(node.port).await;
    // Meanwhile every node answers the others at once, the blocked one's included.
    for _ in 0..3 {
        routes_everywhere(&cluster, &mut reader).await;
    }
    assert_resp!(
        call(&mut pusher, &["LPUSH", &queue, "job"]).await,
        b":1\r\n".to_vec()
    );
    let got = blocked.reply().await;
    assert_resp!(got, common::bulk_array(&[queue.as_bytes(), b"job"]));
    // Back on its router.
    routes_everywhere(&cluster, &mut blocked).await;
    // Keys in two slots: Redis Cluster's CROSSSLOT.
    assert_resp!(
        call(&mut blocked, &["BLPOP", "{a}q", "{b}q", "1"]).await,
        CROSSSLOT.to_vec()
    );
    // A timeout answers as a node does, and commands pipelined behind wait for it.
    let got = pipeline(
        &mut blocked,
        &[
            &["BLPOP", &queue, "0.1"],
            &["LPUSH", "elsewhere", "x"],
            &["PING"],
        ],
    )
    .await;
    assert_resp!(got[0], b"*-1\r\n".to_vec());
    assert_resp!(got[1], b":1\r\n".to_vec());

    // The queue's slot moves while the client is blocked: the node answers MOVED, respguard
    // blocks the command again on the new owner, where a push reaches it.
    blocked.cmd(&[b"BLPOP", queue.as_bytes(), b"0"]).await;
    wait_blocked(node.port).await;
    let to = &primaries[0];
    cluster.give_slot(slot(queue.as_bytes()), to);
    wait_blocked(to.port).await;
    assert_resp!(
        call(&mut pusher, &["RPUSH", &queue, "moved-job"]).await,
        b":1\r\n".to_vec()
    );
    assert_resp!(
        blocked.reply().await,
        common::bulk_array(&[queue.as_bytes(), b"moved-job"])
    );
    routes_everywhere(&cluster, &mut blocked).await;
    // A worker's loop: each job pushed, then popped by a blocking command.
    for i in 0..20 {
        let job = format!("job{i}");
        call(&mut pusher, &["LPUSH", &queue, &job]).await;
        assert_resp!(
            call(&mut blocked, &["BRPOP", &queue, "0"]).await,
            common::bulk_array(&[queue.as_bytes(), job.as_bytes()])
        );
        assert_resp!(call(&mut blocked, &["PING"]).await, b"+PONG\r\n".to_vec());
    }
    // Connections of their own, counted by node: the three blocking commands on the first
    // node shared one (kept while the client was back on its router), and the 21 on the node
    // the slot moved to another.
    let text = common::metrics_text(&p).await;
    let opened = |port: u16| {
        common::metric_sum(
            &text,
            "respguard_cluster_dedicated_connections_total",
            &[("node", &format!("127.0.0.1:{port}"))],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((opened(node.port), opened(to.port)), (1.0, 1.0), "{text}");
    let redirects = common::metric_sum(
        &text,
        "respguard_cluster_redirects_total",
        &[("kind", "moved")],
    );
    assert!(redirects.is_some_and(|v| v >= 1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_messages_published_on_any_node_and_shard_messages_of_their_slot() {
    let cluster = RedisCluster::start();
    let p = cluster_proxy(PERMISSIVE, &cluster).await;
    let mut sub = raw_proxy(&p).await;
    let mut publisher = raw_proxy(&p).await;
    assert_resp!(
        call(&mut sub, &["SUBSCRIBE", "news"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n".to_vec()
    );
    // Published straight to every primary in turn: the cluster propagates it.
    for node in cluster.primaries() {
        let mut direct = node_raw(&node).await;
        call(&mut direct, &["PUBLISH", "news", &node.port.to_string()]).await;
        assert_resp!(
            sub.reply().await,
            common::bulk_array(&[b"message", b"news", node.port.to_string().as_bytes()])
        );
    }
    assert_resp!(
        call(&mut sub, &["PING"]).await,
        common::bulk_array(&[b"pong", b""])
    );
    assert_resp!(
        call(&mut sub, &["UNSUBSCRIBE"]).await,
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n".to_vec()
    );
    routes_everywhere(&cluster, &mut sub).await;

    // Shard channels: on the node of their slot; SPUBLISH through respguard by slot.
    for channel in ["orders", "{orders}.eu", "payments"] {
        assert_resp!(
            call(&mut sub, &["SSUBSCRIBE", channel]).await,
            format!(
                "*3\r\n$10\r\nssubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
                channel.len()
            )
            .into_bytes()
        );
        assert_resp!(
            call(&mut publisher, &["SPUBLISH", channel, "paid"]).await,
            b":1\r\n".to_vec()
        );
        assert_resp!(
            sub.reply().await,
            common::bulk_array(&[b"smessage", channel.as_bytes(), b"paid"])
        );
        // A shard channel of several slots: CROSSSLOT, as Redis Cluster.
        assert_resp!(
            call(&mut sub, &["SSUBSCRIBE", "{a}x", "{b}x"]).await,
            CROSSSLOT.to_vec()
        );
        assert_resp!(
            call(&mut sub, &["SUNSUBSCRIBE"]).await,
            format!(
                "*3\r\n$12\r\nsunsubscribe\r\n${}\r\n{channel}\r\n:0\r\n",
                channel.len()
            )
            .into_bytes()
        );
        routes_everywhere(&cluster, &mut sub).await;
    }
    // A shard channel of another node than the client's subscriptions: a clear error.
    let primaries = cluster.primaries();
    let here = cluster.key_on(&primaries[0], "chan:");
    let there = cluster.key_on(&primaries[1], "chan:");
    call(&mut sub, &["SSUBSCRIBE", &here]).await;
    let got = call(&mut sub, &["SSUBSCRIBE", &there]).await;
    let text = show(&got);
    assert!(
        text.starts_with("-ERR ") && text.contains("another cluster node"),
        "{text}"
    );
    call(&mut sub, &["SUNSUBSCRIBE"]).await;
    routes_everywhere(&cluster, &mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_transaction_start_too_large_to_move_is_refused_at_its_first_key() {
    let cluster = RedisCluster::start();
    let yaml = format!("{PERMISSIVE}limits:\n  max_buffered_bytes: 64kb\n");
    let p = cluster_proxy(&yaml, &cluster).await;
    let mut c = raw_proxy(&p).await;
    let big = "x".repeat(1000);
    assert_resp!(call(&mut c, &["MULTI"]).await, b"+OK\r\n".to_vec());
    for _ in 0..8 {
        let echoes = vec![["ECHO", big.as_str()]; 10];
        let refs: Vec<&[&str]> = echoes.iter().map(|e| &e[..]).collect();
        for r in pipeline(&mut c, &refs).await {
            assert_resp!(r, b"+QUEUED\r\n".to_vec());
        }
    }
    // The transaction started on some primary (its connection is the one in MULTI there): a
    // key of another primary cannot follow.
    let primaries = cluster.primaries();
    let in_multi = |n: &&NodeInfo| {
        cli(n.port, &["CLIENT", "LIST"]).is_some_and(|t| t.lines().any(|l| l.contains(" flags=x ")))
    };
    let here = primaries
        .iter()
        .find(in_multi)
        .expect("a primary holds the transaction");
    let elsewhere = primaries
        .iter()
        .find(|n| n.port != here.port)
        .expect("another primary");
    let key = cluster.key_on(elsewhere, "big:");
    let got = call(&mut c, &["SET", &key, "v"]).await;
    let text = show(&got);
    assert!(
        text.starts_with("-ERR ") && text.contains("queue a keyed command first"),
        "{text}"
    );
    assert_resp!(call(&mut c, &["EXEC"]).await, EXECABORT.to_vec());
    assert_resp!(call(&mut c, &["EXISTS", &key]).await, b":0\r\n".to_vec());
    routes_everywhere(&cluster, &mut c).await;
}
