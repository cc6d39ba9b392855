//! Metrics: the locker's counters and histograms, served as Prometheus text.
//!
//! Installs `metrics-exporter-prometheus` with its HTTP listener on
//! 127.0.0.1:9000 (before connecting: the node actors register their series
//! when they start), takes a few locks, one of them contended, then keeps
//! serving until Ctrl-C: `curl http://127.0.0.1:9000/metrics` shows the
//! `valkeylock_*` series (README, Observability, lists them).
//!
//! `cargo run --example metrics --features metrics -- redis://127.0.0.1:6379`

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use valkeylock::{Locker, LockerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let listen: std::net::SocketAddr = "127.0.0.1:9000".parse()?;
    let prometheus = PrometheusBuilder::new().with_http_listener(listen);
    // Buckets make the histograms Prometheus histograms (else summaries).
    let prometheus = prometheus.set_buckets(&[
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])?;
    prometheus.install()?;

    let locker = Locker::connect(LockerOptions::new([url]).with_key_majority(1)).await?;
    let name = format!("metrics-demo-{}", std::process::id());

    // Uncontended: acquire and release.
    for _ in 0..3 {
        locker.lock(&name).await?.release().await?;
    }
    // Contended: a second caller waits until the first releases.
    let first = locker.lock(&name).await?;
    let waiter = {
        let locker = locker.clone();
        let name = name.clone();
        tokio::spawn(async move { locker.lock(&name).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.release().await?;
    let second = waiter.await??;
    // A try_lock that fails while it is held.
    let refused = locker.try_lock(&name).await;
    println!(
        "try_lock while held: {}",
        refused.err().map_or("acquired?".into(), |e| e.to_string())
    );
    second.release().await?;

    println!("serving http://{listen}/metrics; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    locker.close().await;
    Ok(())
}
