//! Every input stored in `fuzz/corpus/<target>/` (the seeds, and every
//! crash fuzzing found) replayed through its target's function
//! ([`grid_tests::fuzzing`]): a crash once found fails here until its
//! parser is fixed. A target without a corpus directory or a cargo-fuzz
//! entry point, or a directory without a target, fails too, so that a new
//! target cannot be forgotten. Takes seconds.
//!
//! The seeds are made by [`write_seeds`] (ignored: run it with
//! `cargo test --release -p grid-tests --test fuzz_corpus -- --ignored`
//! after a wire format changes); the crash inputs are kept as fuzzing
//! wrote them.

use std::fs;
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use grid_tests::fuzzing::TARGETS;
use protobuf::Message as _;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of a directory, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_stored_input_replays_through_its_target_without_a_failure() {
    let fuzz = fuzz_dir();
    let corpus = fuzz.join("corpus");
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for dir in files(&corpus) {
        let name = dir
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name}: no such target in grid_tests::fuzzing::TARGETS"
        );
    }
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        assert!(dir.is_dir(), "target {name} has no fuzz/corpus/{name}/");
        assert!(
            fuzz.join(format!("fuzz_targets/{name}.rs")).is_file()
                && manifest.contains(&format!("name = \"{name}\"")),
            "target {name} has no cargo-fuzz entry point in fuzz/"
        );
        let inputs = files(&dir);
        assert!(!inputs.is_empty(), "fuzz/corpus/{name}/ holds no input");
        for input in inputs {
            let data = fs::read(&input).expect("a stored input");
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failed.push(input.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their target: {failed:#?}"
    );
    println!("{replayed} stored inputs replayed");
}

/// `payload` as an unsealed frame (a length, then the bytes).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// `mode`, then `parts` back to back.
fn cat(mode: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut v = mode.to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn pc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("encoding to memory")
}

/// A frame sealed with a key other than the targets': what a stranger
/// sends.
fn stranger(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = metad::protocol::Sealer::new([7; 32]);
    let w = s.write(&mut out, payload);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(w)
        .expect("writing to memory");
    out
}

fn metad_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use metad::auth::{Hello, Role, Verdict};
    use metad::protocol::{ErrorReply, MemberStatus, Request, RequestBody, Response, ResponseBody};
    use metad::{Compare, CompareTarget, Event, EventKind, KeyValue, Op, Txn, TxnResult};
    let hello = |role, member_id| {
        pc(&Hello {
            nonce: [1; 32],
            role,
            member_id,
        })
    };
    let req = |body| cat(&[1, 0, 0], &[&pc(&Request { id: 7, body })]);
    let resp = |body| cat(&[2], &[&pc(&Response { id: 7, body })]);
    let txn = Txn {
        compare: vec![Compare {
            key: b"gvs/ino/1".to_vec(),
            target: CompareTarget::ModRev(3),
        }],
        success: vec![
            Op::Put {
                key: b"gvs/ino/1".to_vec(),
                value: b"{}".to_vec(),
                lease: 0,
            },
            Op::Delete {
                key: b"gvs/flush/1".to_vec(),
            },
        ],
        failure: vec![],
    };
    let kv = KeyValue {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        create_rev: 1,
        mod_rev: 2,
        version: 2,
        lease: 0,
    };
    let mut append = raft::prelude::Message::default();
    append.set_msg_type(raft::prelude::MessageType::MsgAppend);
    (append.from, append.to, append.term, append.index) = (1, 2, 3, 4);
    let mut e = raft::prelude::Entry::default();
    (e.term, e.index, e.data) = (3, 5, b"entry".to_vec().into());
    append.entries = vec![e].into();
    let mut heartbeat = raft::prelude::Message::default();
    heartbeat.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    (heartbeat.from, heartbeat.to, heartbeat.commit) = (1, 3, 9);
    let raft_frame =
        |m: &raft::prelude::Message| cat(&[1, 0, 0], &[&m.write_to_bytes().expect("encodes")]);
    vec![
        (
            "metad_handshake",
            cat(&[0], &[&frame(&hello(Role::Client, 0)), &frame(&[2; 32])]),
        ),
        (
            "metad_handshake",
            cat(&[0], &[&frame(&hello(Role::Peer, 2))]),
        ),
        (
            "metad_handshake",
            cat(&[1], &[&frame(&[3; 64]), &frame(&pc(&Verdict::Welcome))]),
        ),
        (
            "metad_handshake",
            cat(
                &[1],
                &[
                    &frame(&[3; 64]),
                    &frame(&pc(&Verdict::Refused("no".into()))),
                ],
            ),
        ),
        ("metad_client_frame", cat(&[0], &[&stranger(b"hello")])),
        (
            "metad_client_frame",
            req(RequestBody::Get {
                key: b"gvs/ino/1".to_vec(),
            }),
        ),
        (
            "metad_client_frame",
            req(RequestBody::Range {
                prefix: b"dvm/".to_vec(),
                limit: 10,
            }),
        ),
        ("metad_client_frame", req(RequestBody::Txn(txn.clone()))),
        (
            "metad_client_frame",
            req(RequestBody::Watch {
                prefix: b"gvs/".to_vec(),
                from_rev: 5,
            }),
        ),
        (
            "metad_client_frame",
            req(RequestBody::MemberAdd {
                addr: "node4:2380".into(),
            }),
        ),
        (
            "metad_client_frame",
            resp(ResponseBody::Kvs {
                kvs: vec![kv.clone()],
                revision: 3,
            }),
        ),
        (
            "metad_client_frame",
            resp(ResponseBody::Events(vec![Event {
                rev: 3,
                kind: EventKind::Delete,
                kv,
            }])),
        ),
        (
            "metad_client_frame",
            resp(ResponseBody::Txn(TxnResult {
                succeeded: true,
                revision: 4,
            })),
        ),
        (
            "metad_client_frame",
            resp(ResponseBody::Status(MemberStatus {
                id: 1,
                leader: 1,
                role: "Leader".into(),
                members: vec![(1, "node1:2380".into())],
                voters: vec![1],
                ..MemberStatus::default()
            })),
        ),
        (
            "metad_client_frame",
            resp(ResponseBody::Error(ErrorReply::NotLeader {
                leader: Some((2, "node2:2380".into())),
            })),
        ),
        ("metad_peer_frame", cat(&[0], &[&stranger(b"raft")])),
        ("metad_peer_frame", raft_frame(&append)),
        ("metad_peer_frame", raft_frame(&heartbeat)),
    ]
}

fn gvsfs_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use gvsfs::chunk::{Bytes, ChunkId, Delta};
    use gvsfs::clone::CloneArg;
    use gvsfs::net::{Put, Request, Response};
    let data = b"a chunk of bytes".to_vec();
    let id = ChunkId::of(&data);
    let request = |r: &Request, raw: &[u8]| {
        let head = pc(r);
        cat(&[1], &[&(head.len() as u16).to_le_bytes(), &head, raw])
    };
    let mut changed = data.clone();
    changed[2..7].copy_from_slice(b"CHUNK");
    let delta = Delta {
        id: ChunkId::of(&changed),
        base: id,
        len: data.len() as u32,
        patches: vec![(2, Bytes(b"CHUNK".to_vec()))],
    };
    let put = Request::Put(Put {
        whole: vec![(id, data.len() as u32)],
        deltas: vec![delta.clone()],
        last: true,
    });
    let delta_seed =
        |mode: u8, tail: &[u8]| cat(&[mode], &[&(data.len() as u16).to_le_bytes(), &data, tail]);
    let arg = |name: &str, flags| {
        CloneArg {
            dst_parent: 1,
            flags,
            name: name.into(),
        }
        .encode()
        .expect("a valid argument")
        .to_vec()
    };
    vec![
        ("gvsfs_chunk_frame", cat(&[0], &[&stranger(b"get")])),
        ("gvsfs_chunk_frame", request(&Request::Get(id), b"")),
        (
            "gvsfs_chunk_frame",
            request(&Request::Has(vec![id, id]), b""),
        ),
        ("gvsfs_chunk_frame", request(&put, &data)),
        (
            "gvsfs_chunk_frame",
            cat(&[2], &[&pc(&Response::Chunk(Some(Bytes(data.clone()))))]),
        ),
        (
            "gvsfs_chunk_frame",
            cat(&[2], &[&pc(&Response::Has(vec![true, false]))]),
        ),
        (
            "gvsfs_chunk_frame",
            cat(&[2], &[&pc(&Response::Need(vec![id]))]),
        ),
        ("gvsfs_delta", delta_seed(0, &pc(&delta))),
        ("gvsfs_delta", delta_seed(1, &[3, 0, b'x', 9, 0, b'y'])),
        ("gvsfs_clone_arg", arg("web.vol", 0)),
        (
            "gvsfs_clone_arg",
            arg("db.vol", gvsfs::clone::GVS_CLONE_REPLACE),
        ),
        ("gvsfs_clone_arg", arg("é", 0)[..40].to_vec()),
        ("gvsfs_ctl", b"start\n".to_vec()),
        ("gvsfs_ctl", b"  stop \n\ndestroy\n".to_vec()),
        ("gvsfs_ctl", b"migrate node3\n".to_vec()),
        ("gvsfs_ctl", b"migrate\nreboot now\n".to_vec()),
    ]
}

fn vmctl_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let shop = r#"name = "shop"
placement = "spread"

[components.web]
image = "/gvs/catalog/web"
cpu = { min = 1, max = 2 }
mem = "256M"
bw = { min = "50M", max = "200M" }
inputs = { http = "tcp/80" }
outputs = ["db"]
properties = { theme = "dark" }

[components.db]
image = "/gvs/catalog/db"
cpu = { min = 1 }
mem = "512M"
volumes = ["root.vol", "data.vol"]
inputs = { sql = "tcp/3306" }
anti_affinity = ["web"]
hypervisor = "xen"

[[connections]]
from = "web.db"
to = "db.sql"
"#;
    let one =
        "name = \"one\"\n[components.a]\nimage = \"/gvs/catalog/a\"\nmem = \"1G\"\npin = true\n";
    let bad = "name = \"Bad\"\n[components.a]\nimage = \"rel\"\nmem = \"12\"\ncpu = 0\n";
    vec![
        ("vmctl_descriptor", shop.as_bytes().to_vec()),
        ("vmctl_descriptor", one.as_bytes().to_vec()),
        ("vmctl_descriptor", bad.as_bytes().to_vec()),
        (
            "vmctl_descriptor",
            b"name = \"x\"\ncomponents = {}\nbogus = 1\n".to_vec(),
        ),
    ]
}

fn lcmd_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use lcmd::packet::{udp_frame, Arp};
    use lcmd::pieces::{plan, PACKET};
    use lcmd::tunnel::{Header, Outbound, VNET};
    let (a, b) = (Ipv4Addr::new(10, 200, 1, 10), Ipv4Addr::new(10, 200, 1, 20));
    let udp = udp_frame([2; 6], [4; 6], (a, 5353), (b, 53), b"payload");
    let arp = Arp {
        op: 1,
        sha: [2; 6],
        spa: a,
        tha: [0; 6],
        tpa: b,
    }
    .to_frame([0xff; 6]);
    let mut tcp = udp.clone();
    // The same frame as a TCP SYN: protocol 6 and a 20-byte TCP header.
    tcp[14 + 9] = 6;
    tcp.truncate(14 + 20);
    tcp.extend_from_slice(&[0x13, 0x88, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0, 0]);
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    let tcp_len = (tcp.len() - 14) as u16;
    tcp[16..18].copy_from_slice(&tcp_len.to_be_bytes());
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(b"\x02db\x00\x00\x01\x00\x01");

    let h = Header {
        app: 1,
        sender: 2,
        seq: 3,
    };
    let body = [&[0u8; VNET][..], &udp].concat();
    let mut out = Outbound::default();
    out.room()[..body.len()].copy_from_slice(&body);
    out.set_len(body.len());
    let foreign = out.seal(&[9; 32], h).to_vec();
    let header = [
        h.app.to_le_bytes(),
        h.sender.to_le_bytes(),
        h.seq.to_le_bytes(),
    ]
    .concat();
    let seqs: Vec<u8> = [
        1000u64.to_le_bytes().to_vec(),
        vec![1, 0, 2, 0, 0xff, 0xff, 0x80, 0, 0, 0x80],
    ]
    .concat();

    // The pieces of a 5000-byte datagram cut at 1000, as (ctl, len, piece)
    // records: in order from one sender.
    let datagram: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut pieces = Vec::new();
    for p in plan(datagram.len(), 9, 1000).expect("pieces") {
        let end = (p.offset() + p.piece).min(p.total);
        let piece = [&p.bytes()[..], &datagram[p.offset()..end]].concat();
        pieces.push(0);
        pieces.extend_from_slice(&(piece.len() as u16).to_le_bytes());
        pieces.extend_from_slice(&piece);
    }
    // The last piece of 42 of 1456 bytes, made from its fields.
    let claim = [
        &[2][..],
        &1u32.to_le_bytes(),
        &1456u16.to_le_bytes(),
        &[41, 41, 0, 1],
    ]
    .concat();
    // The first pieces of four datagrams of 4 MB, from both senders.
    let large: Vec<u8> = (0..4u32)
        .flat_map(|i| {
            [
                &[2 | (i as u8 & 1)][..],
                &i.to_le_bytes(),
                &[0xff, 0xff, 63, 0, 0, 0],
            ]
            .concat()
        })
        .collect();
    let whole: Vec<u8> = plan(3000, 4, PACKET)
        .expect("pieces")
        .flat_map(|p| p.bytes())
        .collect();
    let in_order = [
        &[0xff][..],
        &((3000 + 3 * 16) / 4u16).to_le_bytes(),
        &[1],
        &whole,
    ]
    .concat();

    let http = |first: u32, segs: &[&[u8]]| {
        let mut v = first.to_le_bytes().to_vec();
        for s in segs {
            v.push(0);
            v.push(s.len() as u8);
            v.extend_from_slice(s);
        }
        v
    };
    vec![
        ("lcmd_tunnel", cat(&[0], &[&foreign])),
        ("lcmd_tunnel", cat(&[1], &[&header, &[5, 0], &body])),
        ("lcmd_tunnel", cat(&[2], &[&seqs])),
        ("lcmd_pieces", pieces),
        ("lcmd_pieces", claim),
        ("lcmd_pieces", large),
        ("lcmd_pieces", in_order),
        ("lcmd_packet", udp),
        ("lcmd_packet", arp.clone()),
        ("lcmd_packet", tcp),
        ("lcmd_responder", arp[14..].to_vec()),
        ("lcmd_responder", query),
        (
            "lcmd_http",
            http(1000, &[b"GET / HTTP/1.1\r\nHost: db\r\n\r\n"]),
        ),
        (
            "lcmd_http",
            http(
                u32::MAX - 3,
                &[
                    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n",
                    b"\r\nhello",
                    b"GET / HTTP/1.0\r\n\r\n",
                ],
            ),
        ),
        (
            "lcmd_http",
            http(
                7,
                &[
                    b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"5\r\nhello\r\n0\r\n\r\n",
                ],
            ),
        ),
    ]
}

/// (Re)writes the seeds, `seed-N` in each target's corpus directory,
/// leaving the other inputs (crashes found) as they are.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a wire format changes"]
fn write_seeds() {
    let corpus = fuzz_dir().join("corpus");
    let seeds = [metad_seeds(), gvsfs_seeds(), vmctl_seeds(), lcmd_seeds()].concat();
    for (name, _) in TARGETS {
        let dir = corpus.join(name);
        fs::create_dir_all(&dir).expect("a corpus directory");
        for f in files(&dir) {
            if f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                fs::remove_file(f).expect("an old seed removed");
            }
        }
        let mine: Vec<&Vec<u8>> = seeds
            .iter()
            .filter(|(t, _)| t == name)
            .map(|(_, s)| s)
            .collect();
        assert!(!mine.is_empty(), "no seed for {name}");
        for (i, s) in mine.into_iter().enumerate() {
            fs::write(dir.join(format!("seed-{i}")), s).expect("a seed written");
        }
    }
}
