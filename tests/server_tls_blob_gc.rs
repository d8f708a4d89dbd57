//! A TLS-only `converge server` runs blob GC: its own client speaks TLS (trusting
//! `--tls-ca`, or else the server's certificate file) and sends the token, so the passes
//! read artifacts from the server and are recorded without errors.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge::daemon::gc::{last_pass_path, read_last_passes};
use converge_reconcilers::gc_report::GcKind;
use converge_testkit::{
    KillOnDrop, TestPki, free_loopback_port, loopback_names, write_private_file,
};
use rcgen::{CertificateParams, KeyPair};

const TOKEN: &str = "converge-tls-gc-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// Server certificate and key (PEM), and the CA to trust (PEM; `None` for a self-signed
/// certificate, which is then its own trust anchor).
struct Pki {
    ca_pem: Option<String>,
    cert_pem: String,
    key_pem: String,
}

fn ca_signed() -> Pki {
    let pki = TestPki::ca_signed("converge gc test CA").expect("test pki");
    Pki {
        ca_pem: Some(pki.ca_pem),
        cert_pem: pki.cert_pem,
        key_pem: pki.key_pem,
    }
}

fn self_signed() -> Pki {
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(loopback_names())
        .expect("params")
        .self_signed(&key)
        .expect("self-signed cert");
    Pki {
        ca_pem: None,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Starts the server process; the guard kills it by pid on drop.
fn start(dir: &Path, pki: &Pki) -> KillOnDrop {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let token = dir.join("token");
    write_private_file(&cert, &pki.cert_pem).expect("write");
    write_private_file(&key, &pki.key_pem).expect("write");
    write_private_file(&token, TOKEN).expect("write");
    let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
    command
        .arg("--token-file")
        .arg(&token)
        .arg("server")
        .arg("--store")
        .arg(format!("redb:{}", dir.join("entities.redb").display()))
        .arg("--listen")
        .arg(format!(
            "tcp:127.0.0.1:{}",
            free_loopback_port().expect("free port")
        ))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--registry")
        .arg(format!(
            "127.0.0.1:{}",
            free_loopback_port().expect("free port")
        ))
        .args(["--gc-interval", "1s", "--blob-grace", "1s"])
        .env_remove("CONVERGE_TLS_CA")
        .env_remove("CONVERGE_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(ca_pem) = &pki.ca_pem {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).expect("write ca");
        command.arg("--tls-ca").arg(ca);
    }
    KillOnDrop::new(command.spawn().expect("spawn converge server"))
}

/// Waits for a recorded blob pass without errors (a pass that could not read the
/// artifacts from the server would count one).
fn wait_for_a_clean_blob_pass(dir: &Path) {
    let path = last_pass_path(dir);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(record)) = read_last_passes(&path)
            && let Some(pass) = record.passes.iter().find(|p| p.kind == GcKind::Blobs)
        {
            assert_eq!(pass.errors, 0, "{pass:?}");
            assert!(!pass.dry_run);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no blob GC pass recorded at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_tls_only_server_trusting_its_ca_runs_blob_gc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _server = start(dir.path(), &ca_signed());
    wait_for_a_clean_blob_pass(dir.path());
}

#[test]
fn a_tls_only_server_with_a_self_signed_certificate_runs_blob_gc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _server = start(dir.path(), &self_signed());
    wait_for_a_clean_blob_pass(dir.path());
}
