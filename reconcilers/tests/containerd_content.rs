//! Content store building blocks against a private containerd: resumable writes, digest checks, labels, leases.

mod containerd_support;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use containerd_support::Env;
use converge_reconcilers::containerd::{Descriptor, LeaseResourceKind, sha256_digest};
use tokio::io::{AsyncRead, ReadBuf};

/// Yields `data` but fails once `limit` bytes have been read.
struct FailingAfter {
    data: Vec<u8>,
    pos: usize,
    limit: usize,
}

impl AsyncRead for FailingAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos >= self.limit {
            return Poll::Ready(Err(io::Error::other("connection reset by the test")));
        }
        let end = self.limit.min(self.pos + buf.remaining());
        let chunk = self.data[self.pos..end].to_vec();
        buf.put_slice(&chunk);
        self.pos = end;
        Poll::Ready(Ok(()))
    }
}

fn blob(size: usize) -> (Vec<u8>, Descriptor) {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let desc = Descriptor {
        media_type: "application/octet-stream".into(),
        digest: sha256_digest(&data),
        size: data.len() as u64,
    };
    (data, desc)
}

#[tokio::test]
async fn an_interrupted_write_resumes_where_containerd_left_off() {
    let env = Env::start().await;
    let (data, desc) = blob(3 * 1024 * 1024 + 17);
    let failing = FailingAfter {
        data: data.clone(),
        pos: 0,
        limit: 1024 * 1024 + 5,
    };
    let err = env
        .client
        .write_content(&desc, failing, &HashMap::new(), None)
        .await
        .expect_err("source failed mid-way");
    assert!(err.to_string().contains(&desc.digest), "{err}");
    // The first full chunk reached containerd.
    let offset = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(offset) = env
                .client
                .ingest_offset(&desc.digest)
                .await
                .expect("status")
            {
                return offset;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("partial ingest kept");
    assert_eq!(offset, 1024 * 1024);
    assert!(
        env.client
            .content_info(&desc.digest)
            .await
            .expect("info")
            .is_none()
    );

    let labels = HashMap::from([("test".to_string(), "yes".to_string())]);
    env.client
        .write_content(&desc, data.as_slice(), &labels, None)
        .await
        .expect("resumed write");
    assert_eq!(
        env.client.read_content(&desc.digest).await.expect("read"),
        data
    );
    let info = env
        .client
        .content_info(&desc.digest)
        .await
        .expect("info")
        .expect("stored");
    assert_eq!(info.size, desc.size);
    assert_eq!(info.labels.get("test").map(String::as_str), Some("yes"));
    assert_eq!(
        env.client
            .ingest_offset(&desc.digest)
            .await
            .expect("status"),
        None
    );
}

#[tokio::test]
async fn writing_a_blob_again_only_updates_its_labels() {
    let env = Env::start().await;
    let (data, desc) = blob(1000);
    env.client
        .write_content(&desc, data.as_slice(), &HashMap::new(), None)
        .await
        .expect("first write");
    let labels = HashMap::from([("k".to_string(), "v".to_string())]);
    env.client
        .write_content(&desc, data.as_slice(), &labels, None)
        .await
        .expect("second write");
    let info = env
        .client
        .content_info(&desc.digest)
        .await
        .expect("info")
        .expect("stored");
    assert_eq!(info.labels.get("k").map(String::as_str), Some("v"));
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_refused_and_not_stored() {
    let env = Env::start().await;
    let (data, mut desc) = blob(1000);
    desc.digest = sha256_digest(b"something else");
    let err = env
        .client
        .write_content(&desc, data.as_slice(), &HashMap::new(), None)
        .await
        .expect_err("digest mismatch");
    assert!(
        err.to_string().contains("digest") || err.to_string().contains(&desc.digest),
        "{err}"
    );
    assert!(
        env.client
            .content_info(&desc.digest)
            .await
            .expect("info")
            .is_none()
    );
    let bad = Descriptor {
        digest: "sha256:../../etc".into(),
        ..desc
    };
    let err = env
        .client
        .write_content(&bad, data.as_slice(), &HashMap::new(), None)
        .await
        .expect_err("malformed digest");
    assert!(
        matches!(
            err,
            converge_reconcilers::containerd::ContainerdError::InvalidInput { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_lease_holds_what_was_written_under_it_until_deleted() {
    let env = Env::start().await;
    let lease = env
        .client
        .create_lease("test-lease", Duration::from_secs(600), HashMap::new())
        .await
        .expect("lease");
    let (data, desc) = blob(2000);
    env.client
        .write_content(&desc, data.as_slice(), &HashMap::new(), Some(&lease))
        .await
        .expect("write under lease");
    let (data2, desc2) = blob(3000);
    env.client
        .write_content(&desc2, data2.as_slice(), &HashMap::new(), None)
        .await
        .expect("write");
    env.client
        .lease_add_resource(&lease, LeaseResourceKind::Content, &desc2.digest)
        .await
        .expect("add resource");
    let resources = env.client.lease_resources(&lease).await.expect("resources");
    assert!(
        resources.contains(&("content".to_string(), desc.digest.clone())),
        "{resources:?}"
    );
    assert!(
        resources.contains(&("content".to_string(), desc2.digest.clone())),
        "{resources:?}"
    );
    assert_eq!(
        env.client.list_leases().await.expect("leases"),
        vec![lease.clone()]
    );
    env.client.delete_lease(&lease).await.expect("delete");
    env.client
        .delete_lease(&lease)
        .await
        .expect("delete again is fine");
    assert!(env.client.list_leases().await.expect("leases").is_empty());
}
