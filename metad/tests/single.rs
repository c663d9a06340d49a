//! One member: reads and writes, CAS, watches, lease expiry, the CLI,
//! authentication and malformed frames.

mod common;

use common::Cluster;
use metad::auth::{connect_handshake, Role};
use metad::protocol::{
    decode, encode, write_frame, ErrorReply, Request, RequestBody, Response, ResponseBody,
    MAX_CLIENT_FRAME,
};
use metad::{ClientConfig, ClientError, Compare, CompareTarget, EventKind, Op, Secret, Txn};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn put_get_cas_watch_and_leases() {
    let c = Cluster::start(1);
    let client = c.client();
    let r1 = client.put("a/1", "one").await.unwrap();
    let r2 = client.put("a/2", "two").await.unwrap();
    assert_eq!(r2, r1 + 1);
    assert_eq!(client.get("a/1").await.unwrap().unwrap().value, b"one");
    assert!(client.get("nope").await.unwrap().is_none());
    let (kvs, rev) = client.get_prefix("a/").await.unwrap();
    assert_eq!((kvs.len(), rev), (2, r2));

    // CAS over two keys: succeeds only if both hold.
    let txn = |v1: &str| Txn {
        compare: vec![
            Compare {
                key: b"a/1".to_vec(),
                target: CompareTarget::Value(v1.into()),
            },
            Compare {
                key: b"a/2".to_vec(),
                target: CompareTarget::ModRev(r2),
            },
        ],
        success: vec![
            Op::Put {
                key: b"a/1".to_vec(),
                value: b"uno".to_vec(),
                lease: 0,
            },
            Op::Delete {
                key: b"a/2".to_vec(),
            },
        ],
        failure: vec![],
    };
    assert!(!client.txn(txn("wrong")).await.unwrap().succeeded);
    assert!(client.txn(txn("one")).await.unwrap().succeeded);
    assert!(client.get("a/2").await.unwrap().is_none());
    assert!(client.cas("c", None, "first").await.unwrap());
    assert!(!client.cas("c", None, "second").await.unwrap());
    assert!(client.cas("c", Some(b"first"), "second").await.unwrap());

    // Limits are errors, not crashes.
    let err = client.put(vec![b'k'; 5000], "x").await.unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    let err = client
        .put("k", vec![0u8; 1024 * 1024 + 1])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");

    // A watch from revision 1 replays the history, then follows live writes.
    let mut w = client.watch("a/", 1).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), w.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    let kinds: Vec<_> = got.iter().map(|e| (e.kv.key.clone(), e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (b"a/1".to_vec(), EventKind::Put),
            (b"a/2".to_vec(), EventKind::Put),
            (b"a/1".to_vec(), EventKind::Put),
            (b"a/2".to_vec(), EventKind::Delete)
        ]
    );
    let live = client.put("a/3", "three").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((e.rev, e.kv.key.as_slice()), (live, &b"a/3"[..]));

    // A lease kept alive survives; one left alone expires with its keys.
    let kept = client
        .lease_grant(Duration::from_millis(800))
        .await
        .unwrap();
    let dropped = client
        .lease_grant(Duration::from_millis(800))
        .await
        .unwrap();
    client.put_with_lease("l/kept", "x", kept).await.unwrap();
    client
        .put_with_lease("l/dropped", "x", dropped)
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.lease_keepalive(kept).await.unwrap();
    }
    assert!(client.get("l/kept").await.unwrap().is_some());
    assert!(client.get("l/dropped").await.unwrap().is_none());
    assert!(client.lease_keepalive(dropped).await.is_err());
    client.lease_revoke(kept).await.unwrap();
    assert!(client.get("l/kept").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_works() {
    let c = Cluster::start(1);
    let out = c.cli().args(["put", "x/k", "v1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.cli().args(["get", "x/k"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");
    let out = c.cli().args(["list", "x/", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kvs"][0]["value"], "v1");
    let out = c.cli().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["leader"], 1);
    assert_eq!(v["members"][0]["reachable"], true);
    let out = c.cli().args(["get", "x/missing"]).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    let out = c.cli().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        help.lines().next().unwrap(),
        "metad: the grid's replicated metadata service (Raft on RocksDB)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_clients_are_refused() {
    let c = Cluster::start(1);
    let mut cfg = ClientConfig::new(c.endpoints(), Secret::generate());
    cfg.timeout = Duration::from_secs(2);
    let err = metad::Client::new(cfg).get("x").await.unwrap_err();
    assert!(matches!(err, ClientError::Auth { .. }), "{err}");
    // A client that skips the handshake and sends a request gets nothing.
    let mut s = TcpStream::connect(&c.members[0].addr).await.unwrap();
    write_frame(
        &mut s,
        &metad::protocol::encode(&metad::protocol::Request {
            id: 1,
            body: metad::protocol::RequestBody::Status,
        }),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("Leader"));
    // An unknown member cannot connect as a peer.
    let mut s = TcpStream::connect(&c.members[0].addr).await.unwrap();
    let secret = Secret::load(&c.secret_file()).unwrap();
    let err = connect_handshake(&mut s, &secret, Role::Peer, 99)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
    assert!(c.log(0).contains("connection refused"));
    // The service is fine.
    c.client().put("ok", "1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_get_an_error_and_the_server_survives() {
    let c = Cluster::start(1);
    let secret = Secret::load(&c.secret_file()).unwrap();
    // A well-formed request, but sent without its tag: what an attacker
    // injecting into an authenticated TCP stream could send.
    let mut injected = Vec::new();
    let put = Request {
        id: 1,
        body: RequestBody::Txn(Txn::default()),
    };
    write_frame(&mut injected, &encode(&put)).await.unwrap();
    for (bad, why) in [
        (
            vec![0u8, 0, 0, 3, 0xff, 0xff, 0xff],
            "authentication failed",
        ),
        (vec![0xff, 0xff, 0xff, 0xff], "over the limit"),
        (injected, "authentication failed"),
    ] {
        let mut s = TcpStream::connect(&c.members[0].addr).await.unwrap();
        let mut session = connect_handshake(&mut s, &secret, Role::Client, 0)
            .await
            .unwrap();
        s.write_all(&bad).await.unwrap();
        let frame = session.recv.read(&mut s, MAX_CLIENT_FRAME).await.unwrap();
        let resp: Response = decode(&frame).unwrap();
        assert!(
            matches!(&resp.body, ResponseBody::Error(ErrorReply::Malformed(m)) if m.contains(why)),
            "{resp:?}"
        );
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "connection closed after the error");
    }
    // Garbage before any handshake.
    let mut s = TcpStream::connect(&c.members[0].addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await;
    c.client().put("still", "alive").await.unwrap();
    assert_eq!(
        c.client().get("still").await.unwrap().unwrap().value,
        b"alive"
    );
}

#[test]
fn the_blocking_client_works() {
    let c = Cluster::start(1);
    let secret = Secret::load(&c.secret_file()).unwrap();
    let b = metad::BlockingClient::new(ClientConfig::new(c.endpoints(), secret)).unwrap();
    let rev = b.put("b/1", "x").unwrap();
    assert_eq!(b.get("b/1").unwrap().unwrap().mod_rev, rev);
    let mut w = b.watch("b/", rev).unwrap();
    assert_eq!(b.block_on(w.next()).unwrap().unwrap().rev, rev);
    b.delete("b/1").unwrap();
    assert_eq!(
        b.block_on(w.next()).unwrap().unwrap().kind,
        EventKind::Delete
    );
    assert!(b.get_prefix("b/").unwrap().0.is_empty());
}

/// Waits (generously: this only catches a hang) for `s` to be closed by
/// the other side; whether it was.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_and_clients_are_served_afterwards() {
    const CAP: usize = 4;
    let c = Cluster::start_with(1, &["--max-connections", &CAP.to_string()]);
    let secret = Secret::load(&c.secret_file()).unwrap();
    let addr = &c.members[0].addr;
    // CAP authenticated connections fill the member...
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(addr).await.unwrap();
        connect_handshake(&mut s, &secret, Role::Client, 0)
            .await
            .unwrap();
        held.push(s);
    }
    // ...so one more is closed at once, before its handshake, and logged.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let r = connect_handshake(&mut s, &secret, Role::Client, 0).await;
    assert!(r.is_err(), "a connection past the cap was served");
    drop(held);
    // A flood of silent connections, more than the cap: the ones past it
    // are closed at once, the others when their handshake time is up...
    let mut flood = Vec::new();
    for _ in 0..3 * CAP {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    for s in &mut flood {
        assert!(closed_by_peer(s).await, "a silent connection stayed open");
    }
    // ...and a client is served afterwards.
    c.client().put("after", "flood").await.unwrap();
    assert!(c.log(0).contains("connection limit"), "{}", c.log(0));
}
