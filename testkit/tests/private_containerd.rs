//! The private containerd starts on its own socket and leaves nothing behind.

use converge_testkit::PrivateContainerd;

#[tokio::test]
async fn private_containerd_answers_and_removes_its_dir_when_stopped() {
    let ctrd = PrivateContainerd::start().await.expect("start containerd");
    assert!(ctrd.socket().exists());
    assert!(ctrd.root().starts_with(ctrd.dir()));
    let dir = ctrd.dir().to_path_buf();
    ctrd.stop().await.expect("stop");
    assert!(!dir.exists(), "temp dir removed");
}

#[tokio::test]
async fn private_containerd_cleans_up_on_drop_and_survives_a_restart() {
    let mut ctrd = PrivateContainerd::start().await.expect("start containerd");
    ctrd.restart().await.expect("restart");
    assert!(ctrd.socket().exists());
    let dir = ctrd.dir().to_path_buf();
    drop(ctrd);
    assert!(!dir.exists(), "temp dir removed on drop");
}
