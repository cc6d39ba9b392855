//! TLS to a TLS-enabled `valkey-server`, with a certificate authority the test
//! generates (`openssl`): locking, wake-ups and loss detection work over TLS,
//! and a server whose certificate we do not trust is a connection error.
#![allow(missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;
use valkeylock::{ConnectionErrorKind, Error, Locker, LockerOptions, LostReason};

/// A CA and a server certificate for 127.0.0.1, written to `dir`.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=valkeylock test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with TLS on a port of its own (plain TCP stays on `server.port`),
/// its certificates in a fresh directory named after `tag`: that directory,
/// the CA to trust, the TLS port, the server.
fn tls_server(tag: &str) -> (PathBuf, PathBuf, u16, ValkeyServer) {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let (ca, cert, key) = make_certs(&dir);
    let tls_port = free_port();
    let server = ValkeyServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    (dir, ca, tls_port, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_over_tls() {
    init_tracing();
    let (dir, ca, tls_port, server) = tls_server("valkeylock-tls");
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let opts = LockerOptions::new([url.clone()])
        .with_key_majority(1)
        .with_tls_ca_file(ca.to_str().unwrap());
    let a = Locker::connect(opts.clone())
        .await
        .expect("connect over TLS");
    let b = Locker::connect(opts).await.expect("connect over TLS");
    let name = unique("tls");
    let g = a.lock(&name).await.unwrap();
    assert!(b.try_lock(&name).await.is_err());
    // A waiter over TLS is woken by the invalidation of the release.
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { b.lock(&name).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = g.release().await;
    let g2 = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A loss is reported over TLS too (the admin client uses the plain port).
    let admin = server.admin().await;
    let _: i64 = fred::prelude::KeysInterface::del(&admin, format!("valkeylock:0:{name}"))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), g2.lost())
        .await
        .unwrap();
    assert_eq!(reason, LostReason::Deleted);
    a.close().await;
    b.close().await;

    // A CA that did not sign the server's certificate: a clear connection error.
    let other = dir.join("other");
    let (other_ca, _, _) = make_certs(&other);
    let err = Locker::connect(
        LockerOptions::new([url])
            .with_key_majority(1)
            .with_tls_ca_file(other_ca.to_str().unwrap()),
    )
    .await
    .expect_err("untrusted certificate");
    eprintln!("untrusted server certificate: {}", with_causes(&err));
    assert!(
        matches!(
            err,
            Error::Connection {
                kind: ConnectionErrorKind::Tls,
                ..
            }
        ),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `valkeylock status` and `release --force` reach TLS nodes (they go
/// through a locker, which has the `tls_ca_file` from the config file).
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_and_release_over_tls() {
    let (dir, ca, tls_port, _server) = tls_server("valkeylock-tls-cli");
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let config = dir.join("valkeylock.toml");
    std::fs::write(
        &config,
        format!(
            "nodes = [{url:?}]\nkey_majority = 1\ntls_ca_file = {:?}\n",
            ca.to_str().unwrap()
        ),
    )
    .unwrap();
    let tool = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_valkeylock"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("VALKEYLOCK_") {
                c.env_remove(k);
            }
        }
        c.arg("--config")
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(Duration::from_secs(60), c.output())
                .await
                .expect("the tool hangs")
                .expect("run the tool")
        }
    };
    let locker = Locker::connect(
        LockerOptions::new([url.clone()])
            .with_key_majority(1)
            .with_tls_ca_file(ca.to_str().unwrap()),
    )
    .await
    .unwrap();
    let name = unique("tls-cli");
    let guard = locker.lock(&name).await.unwrap();
    let out = tool(&["status", "--json", &name]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["state"], "held", "{doc}");
    assert_eq!(doc["nodes"][0]["connected"], true, "{doc}");

    let out = tool(&["release", "--force", &name]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deleted 1 of 1 keys"), "{stdout}");
    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("the holder learns of the release");
    assert_eq!(reason, LostReason::Deleted);
    let out = tool(&["status", &name]).await;
    assert_eq!(out.status.code(), Some(1));
    locker.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
