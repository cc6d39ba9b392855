//! Fencing tokens: a resource that rejects writes from a stale holder.
//!
//! Holder A takes the lock, then stalls (a GC pause, a page fault, SIGSTOP…)
//! longer than the lock's validity. B gets the lock meanwhile and writes. When
//! A wakes up and writes, the storage rejects it: its token is older than the
//! newest one it has seen. Checking `is_held()` first would not be enough; the
//! stall can come right after the check.
//!
//! `cargo run --example fencing -- redis://127.0.0.1:6379`

use std::sync::Mutex;

use valkeylock::{Locker, LockerOptions};

/// A storage that remembers the highest fencing token it has accepted.
#[derive(Default)]
struct FencedStorage {
    highest: Mutex<u64>,
    log: Mutex<Vec<String>>,
}

impl FencedStorage {
    fn write(&self, token: u64, what: &str) -> Result<(), String> {
        let mut highest = self.highest.lock().expect("not poisoned");
        if token < *highest {
            return Err(format!("rejected {what:?}: token {token} < {}", *highest));
        }
        *highest = token;
        self.log
            .lock()
            .expect("not poisoned")
            .push(format!("{token}: {what}"));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let options = LockerOptions::new([url])
        .with_key_majority(1)
        .with_fencing(true);
    let name = format!("fencing-demo-{}", std::process::id());
    let storage = FencedStorage::default();

    let a = Locker::connect(options.clone()).await?;
    let b = Locker::connect(options).await?;

    let guard_a = a.lock(&name).await?;
    let token_a = guard_a.fencing_token();
    println!("A holds the lock with token {token_a}");
    // A stalls before its write. Its lease can run out meanwhile and B get
    // the lock; `force_lock` stands in for that here, deterministically.
    let guard_b = b.force_lock(&name).await?;
    let token_b = guard_b.fencing_token();
    println!("B holds the lock with token {token_b}");
    storage.write(token_b, "B's update")?;

    // A wakes up and writes with its old token.
    match storage.write(token_a, "A's late update") {
        Ok(()) => println!("A's late write was accepted (should not happen)"),
        Err(e) => println!("storage: {e}"),
    }
    println!(
        "when A wrote, its guard still said held: {} (the news travels; the token does not need it)",
        guard_a.is_held()
    );
    println!("A is then told: {}", guard_a.lost().await);
    let _ = guard_b.release().await;
    a.close().await;
    b.close().await;
    println!(
        "accepted writes: {:?}",
        storage.log.lock().expect("not poisoned")
    );
    Ok(())
}
