//! Three (and five) members: fail-over under write load, restart of the whole
//! cluster, watch resumption across member failures, and a linearizability
//! check of concurrent compare-and-swap with a leader kill.

mod common;

use common::Cluster;
use metad::linearizability::{check, HistOp, RegOp};
use metad::ClientError;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes go on while the leader is killed (twice) and restarted; every
/// acknowledged write is then on every member.
#[tokio::test(flavor = "multi_thread")]
async fn writes_continue_through_leader_kills() {
    let mut c = Cluster::start(3);
    let client = Arc::new(c.client());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut last_ok = Instant::now();
            let mut max_gap = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("w/{i:06}");
                if client.put(key.as_bytes(), "v").await.is_ok() {
                    max_gap = max_gap.max(last_ok.elapsed());
                    last_ok = Instant::now();
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
            max_gap
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let l = c.leader().await;
        let before = acked.lock().unwrap().len();
        let t = Instant::now();
        c.kill_member(l);
        while acked.lock().unwrap().len() == before {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no write accepted after killing the leader"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "fail-over: first write accepted {:?} after killing leader {}",
            t.elapsed(),
            l + 1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.start_member(l);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let max_gap = writer.await.unwrap();
    eprintln!("longest pause between acknowledged writes: {max_gap:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let rev = c.settled_revision().await;
    let (kvs, read_rev) = client.get_prefix("w/").await.unwrap();
    assert_eq!(rev, read_rev);
    let present: BTreeSet<Vec<u8>> = kvs.into_iter().map(|kv| kv.key).collect();
    for k in &acked {
        assert!(
            present.contains(k.as_bytes()),
            "acknowledged write {k} lost"
        );
    }
    eprintln!(
        "{} acknowledged writes, all present; revision {rev}",
        acked.len()
    );
}

/// All members killed at once come back with the same state and revision.
#[tokio::test(flavor = "multi_thread")]
async fn full_restart_keeps_state_and_revision() {
    let mut c = Cluster::start(3);
    let client = c.client();
    for i in 0..50 {
        client.put(format!("r/{i}"), format!("v{i}")).await.unwrap();
    }
    client.delete("r/7").await.unwrap();
    let rev = c.settled_revision().await;
    let (before, _) = client.get_prefix("r/").await.unwrap();
    for i in 0..3 {
        c.kill_member(i);
    }
    for i in 0..3 {
        c.start_member(i);
    }
    let client = c.client();
    let (after, after_rev) = client.get_prefix("r/").await.unwrap();
    assert_eq!(after_rev, rev);
    assert_eq!(after, before);
    assert_eq!(c.settled_revision().await, rev);
    // and it still takes writes
    assert_eq!(client.put("r/new", "x").await.unwrap(), rev + 1);
}

/// A watch whose member dies resumes elsewhere from the last revision it
/// saw: every event arrives once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn resumed_watch_misses_nothing() {
    let mut c = Cluster::start(3);
    let client = c.client();
    let start = client.put("x/start", "0").await.unwrap();
    // The watch connects to the first endpoint, member 1.
    let mut w = client.watch("x/", start).await.unwrap();
    let mut revs = Vec::new();
    let mut written = Vec::new();
    for i in 0..60 {
        if i == 20 {
            c.kill_member(0);
        }
        if i == 40 {
            c.start_member(0);
        }
        match client.put(format!("x/{i}"), "v").await {
            Ok(r) => written.push(r),
            Err(e) => panic!("write {i}: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while revs.len() < written.len() + 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, w.next())
            .await
            .expect("events missing")
            .unwrap()
            .unwrap();
        revs.push(ev.rev);
    }
    let mut expected = vec![start];
    expected.extend(written);
    assert_eq!(revs, expected);
}

/// Concurrent CAS, reads and writes from several clients on a few keys,
/// with the leader killed and restarted in the middle, are linearizable.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cas_with_leader_kill_is_linearizable() {
    let mut c = Cluster::start(3);
    let origin = Instant::now();
    let history = Arc::new(Mutex::new(Vec::<HistOp>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let client = c.client();
        let (history, stop) = (history.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let now = || origin.elapsed().as_micros() as u64;
            let mut seen: Option<Vec<u8>> = None;
            for n in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let key = format!("k{}", (n + w) % 3).into_bytes();
                let call = now();
                let (op, ret) = match n % 4 {
                    0 => match client.get(key.clone()).await {
                        Ok(kv) => {
                            seen = kv.map(|kv| kv.value);
                            (RegOp::Read(seen.clone()), Some(now()))
                        }
                        Err(_) => continue,
                    },
                    3 => {
                        let v = format!("w{w}-{n}").into_bytes();
                        let r = client.put(key.clone(), v.clone()).await;
                        (RegOp::Write(v), r.is_ok().then(now))
                    }
                    _ => {
                        let new = format!("c{w}-{n}").into_bytes();
                        match client.cas(key.clone(), seen.as_deref(), new.clone()).await {
                            Ok(ok) => {
                                let op = RegOp::Cas {
                                    expected: seen.clone(),
                                    new: new.clone(),
                                    ok,
                                };
                                if ok {
                                    seen = Some(new);
                                }
                                (op, Some(now()))
                            }
                            Err(ClientError::Server(_)) => continue,
                            Err(_) => (
                                RegOp::Cas {
                                    expected: seen.clone(),
                                    new,
                                    ok: false,
                                },
                                None,
                            ),
                        }
                    }
                };
                history.lock().unwrap().push(HistOp { key, call, ret, op });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let l = c.leader().await;
    c.kill_member(l);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.start_member(l);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let h = history.lock().unwrap().clone();
    let unknown = h.iter().filter(|o| o.ret.is_none()).count();
    eprintln!("{} operations, {} with unknown outcome", h.len(), unknown);
    assert!(h.len() > 300);
    check(&h).unwrap();
}

/// A member that missed more than a snapshot interval catches up by
/// snapshot; then a member is removed while the cluster serves.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_catch_up_and_member_removal() {
    let mut c = Cluster::start_with(3, &["--snapshot-interval", "50"]);
    let client = c.client();
    c.kill_member(2);
    for i in 0..300 {
        client.put(format!("s/{i}"), "v").await.unwrap();
    }
    c.start_member(2);
    let rev = c.settled_revision().await;
    assert!(
        c.log(2).contains("restored state from a snapshot"),
        "{}",
        c.log(2)
    );
    assert_eq!(
        client
            .member_status(&c.members[2].addr)
            .await
            .unwrap()
            .revision,
        rev
    );

    let out = c.cli().args(["member", "remove", "3"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kill_member(2);
    client.put("s/after", "v").await.unwrap();
    let s = client.status().await.unwrap();
    assert_eq!(
        s.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(s.members.iter().all(|m| m.reachable));
}

#[tokio::test(flavor = "multi_thread")]
async fn five_members_survive_two_failures_and_stop_at_three() {
    let mut c = Cluster::start(5);
    let client = c.client();
    client.put("five/a", "1").await.unwrap();

    // Two of five down (the leader among them): a quorum of three remains.
    let leader = c.leader().await;
    let other = (0..5).find(|&i| i != leader).unwrap();
    c.kill_member(leader);
    c.kill_member(other);
    client.put("five/b", "2").await.unwrap();
    assert_eq!(client.get("five/a").await.unwrap().unwrap().value, b"1");

    // A third down: no quorum, and the client says so.
    let third = (0..5).find(|&i| i != leader && i != other).unwrap();
    c.kill_member(third);
    let err = client.put("five/c", "3").await.unwrap_err().to_string();
    assert!(err.contains("of 5 members reachable"), "{err}");

    // Back to five: the acknowledged writes are there. (The refused one
    // may be too: the old leader may have logged it before losing its
    // quorum, so a timed-out write has an unknown outcome, as in etcd.)
    for i in [leader, other, third] {
        c.start_member(i);
    }
    c.settled_revision().await;
    assert_eq!(client.get("five/a").await.unwrap().unwrap().value, b"1");
    assert_eq!(client.get("five/b").await.unwrap().unwrap().value, b"2");
}
