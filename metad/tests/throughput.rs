//! A quick measurement, not a test (ignored by default): writes per second
//! and latency percentiles of 256-byte puts on a local 3-member cluster,
//! with 1 and with 64 concurrent clients.
//! Run: `cargo test --release -p metad --test throughput -- --ignored --nocapture`

mod common;

use common::Cluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn run(c: &Cluster, clients: usize, dur: Duration) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let client = c.client();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let value = vec![b'v'; 256];
            let mut i = 0u64;
            while start.elapsed() < dur {
                let t = Instant::now();
                client
                    .put(format!("bench/{w}/{i}"), value.clone())
                    .await
                    .unwrap();
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "{clients:>3} clients: {:>8.0} writes/s, p50 {:?}, p99 {:?} ({} writes)",
        lat.len() as f64 / secs,
        p(0.50),
        p(0.99),
        lat.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn write_throughput() {
    let c = Arc::new(Cluster::start(3));
    c.client().put("warm", "up").await.unwrap();
    for clients in [1, 64] {
        run(&c, clients, Duration::from_secs(5)).await;
    }
}
