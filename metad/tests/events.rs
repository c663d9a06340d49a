//! The grid's event log on one member: events read back oldest first,
//! a follower sees what is appended after its list, and the log keeps
//! about its last `RETAIN` events however many are appended.

mod common;

use common::Cluster;
use metad::events::{self, Fields, GridEvent, Source, RETAIN, TRIM_EVERY};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn append_list_follow_and_trim() {
    let c = Cluster::start(1);
    let client = c.client();
    let ev = |i: usize| {
        GridEvent::new(
            "node1",
            Source::Gvs,
            "repair-progress",
            "node1",
            format!("{i}"),
        )
        .with(Fields {
            bytes: Some(i as u64),
            ..Fields::default()
        })
    };
    for i in 0..3 {
        events::append(&client, &ev(i)).await.unwrap();
    }
    let (evs, rev) = events::list(&client).await.unwrap();
    let seen: Vec<&str> = evs.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(seen, ["0", "1", "2"]);
    assert_eq!(
        (evs[1].source, evs[1].kind.as_str()),
        (Source::Gvs, "repair-progress")
    );
    assert_eq!(evs[2].fields.bytes, Some(2));

    // A follower from the list's revision sees the next event, only.
    let mut f = events::follow(&client, rev + 1).await.unwrap();
    events::append(&client, &ev(3)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), f.next())
        .await
        .expect("the follower sees the append")
        .unwrap()
        .unwrap();
    assert_eq!(next.message, "3");

    // Many more: the oldest are trimmed as writers append.
    for i in 4..RETAIN + 2 * TRIM_EVERY as usize {
        events::append(&client, &ev(i)).await.unwrap();
    }
    let (evs, _) = events::list(&client).await.unwrap();
    assert!(
        (RETAIN..=RETAIN + TRIM_EVERY as usize).contains(&evs.len()),
        "{} events kept",
        evs.len()
    );
    assert_ne!(evs[0].message, "0", "the oldest are gone");
    assert_eq!(
        evs.last().unwrap().message,
        (RETAIN + 2 * TRIM_EVERY as usize - 1).to_string()
    );
    assert_eq!(events::trim(&client, 10).await.unwrap(), evs.len() - 10);
    assert_eq!(events::list(&client).await.unwrap().0.len(), 10);
}
