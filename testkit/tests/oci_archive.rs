//! The busybox oci-archive is readable by skopeo, as `converge artifact import` users will feed it.

use std::process::Command;

use converge_testkit::busybox_image_layout;

#[test]
fn skopeo_reads_the_busybox_oci_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = busybox_image_layout(dir.path().join("layout")).expect("layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg("--raw")
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(raw.contains(&layout.config.digest), "{raw}");
}
