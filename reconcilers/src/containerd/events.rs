//! containerd's event stream, decoded into the few events converge reacts to, resubscribing after disconnects.

use std::time::Duration;

use containerd_client::events::{ContainerDelete, TaskExit, TaskOom, TaskStart};
use containerd_client::services::v1::SubscribeRequest;
use futures::Stream;
use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;

use super::client::ContainerdClient;

/// How long a new subscription request gets to reach containerd before it counts as live.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(100);

/// An event from containerd that converge cares about. Events only say "look again":
/// after [`ContainerdEvent::Resubscribed`] some events may have been missed, so consumers
/// should re-check everything (a resync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerdEvent {
    /// A task's (or exec's) process exited.
    TaskExit {
        /// The container.
        container_id: String,
        /// The process id within the task (the container id for the init process).
        process_id: String,
        /// Its pid.
        pid: u32,
        /// Its exit status (128 + signal when killed).
        exit_status: u32,
    },
    /// A task started.
    TaskStart {
        /// The container.
        container_id: String,
        /// Its init pid.
        pid: u32,
    },
    /// A task was killed for running out of memory.
    TaskOom {
        /// The container.
        container_id: String,
    },
    /// A container record was deleted.
    ContainerDelete {
        /// The container.
        container_id: String,
    },
    /// The stream was re-established after a disconnect; events in between are lost.
    Resubscribed,
}

/// Decodes one envelope payload; `None` for event types converge ignores or cannot decode.
pub fn decode_event(any: &Any) -> Option<ContainerdEvent> {
    // containerd 1.6 sends type URLs without a leading slash; newer ones may add a prefix.
    let type_name = any.type_url.rsplit('/').next().unwrap_or("");
    let bytes = any.value.as_slice();
    match type_name {
        "containerd.events.TaskExit" => {
            TaskExit::decode(bytes)
                .ok()
                .map(|e| ContainerdEvent::TaskExit {
                    container_id: e.container_id,
                    process_id: e.id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                })
        }
        "containerd.events.TaskStart" => {
            TaskStart::decode(bytes)
                .ok()
                .map(|e| ContainerdEvent::TaskStart {
                    container_id: e.container_id,
                    pid: e.pid,
                })
        }
        "containerd.events.TaskOOM" => {
            TaskOom::decode(bytes)
                .ok()
                .map(|e| ContainerdEvent::TaskOom {
                    container_id: e.container_id,
                })
        }
        "containerd.events.ContainerDelete" => ContainerDelete::decode(bytes)
            .ok()
            .map(|e| ContainerdEvent::ContainerDelete { container_id: e.id }),
        _ => None,
    }
}

impl ContainerdClient {
    /// Subscribes to this namespace's task and container events. The stream never ends on
    /// its own: after a disconnect (containerd restart) it resubscribes with backoff
    /// (100 ms doubling to 5 s) and yields [`ContainerdEvent::Resubscribed`]. The background
    /// task stops when the stream is dropped. Must be called within a Tokio runtime.
    pub fn subscribe(&self) -> impl Stream<Item = ContainerdEvent> + Send + 'static {
        let (tx, rx) = mpsc::channel(256);
        let client = self.clone();
        tokio::spawn(async move { client.pump_events(tx).await });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
    }

    async fn pump_events(self, tx: mpsc::Sender<ContainerdEvent>) {
        let filters = vec![
            format!("namespace=={},topic~=\"^/tasks/\"", self.namespace()),
            format!(
                "namespace=={},topic==\"/containers/delete\"",
                self.namespace()
            ),
        ];
        let mut delay = Duration::from_millis(100);
        let mut first = true;
        loop {
            // Only (re)subscribe once containerd answers, so the marker below means something.
            if first || self.version().await.is_ok() {
                let mut events = self.events();
                let call = events.subscribe(SubscribeRequest {
                    filters: filters.clone(),
                });
                let mut call = std::pin::pin!(call);
                // containerd sends response headers only with the first event, so the call
                // stays pending while the subscription is already live: announce the
                // resubscription once the request has had time to reach containerd.
                let mut announced = first;
                let subscribed = loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        result = &mut call => break result,
                        _ = tokio::time::sleep(SUBSCRIBE_SETTLE), if !announced => {
                            announced = true;
                            if tx.send(ContainerdEvent::Resubscribed).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                first = false;
                match subscribed {
                    Ok(resp) => {
                        if !announced && tx.send(ContainerdEvent::Resubscribed).await.is_err() {
                            return;
                        }
                        delay = Duration::from_millis(100);
                        if !self.forward(resp.into_inner(), &tx).await {
                            return;
                        }
                    }
                    Err(status) => {
                        tracing::debug!(error = %status, ?delay, "containerd event subscription failed");
                    }
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Forwards decoded events until the stream breaks (returns true) or the receiver is
    /// gone (returns false).
    async fn forward(
        &self,
        mut stream: tonic::Streaming<containerd_client::types::Envelope>,
        tx: &mpsc::Sender<ContainerdEvent>,
    ) -> bool {
        loop {
            tokio::select! {
                _ = tx.closed() => return false,
                msg = stream.message() => match msg {
                    Ok(Some(envelope)) => {
                        let event = envelope.event.as_ref().and_then(decode_event);
                        if let Some(event) = event
                            && tx.send(event).await.is_err()
                        {
                            return false;
                        }
                    }
                    Ok(None) => return true,
                    Err(status) => {
                        tracing::debug!(error = %status, "containerd event stream broke");
                        return true;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_exit_payloads_decode_with_or_without_a_leading_slash() {
        let exit = TaskExit {
            container_id: "sandbox.web.app".into(),
            id: "sandbox.web.app".into(),
            pid: 42,
            exit_status: 3,
            exited_at: None,
        };
        for url in ["containerd.events.TaskExit", "/containerd.events.TaskExit"] {
            let any = Any {
                type_url: url.into(),
                value: exit.encode_to_vec(),
            };
            assert_eq!(
                decode_event(&any),
                Some(ContainerdEvent::TaskExit {
                    container_id: "sandbox.web.app".into(),
                    process_id: "sandbox.web.app".into(),
                    pid: 42,
                    exit_status: 3,
                })
            );
        }
    }

    #[test]
    fn unknown_and_garbled_events_are_ignored() {
        let any = Any {
            type_url: "containerd.events.ImageCreate".into(),
            value: vec![],
        };
        assert_eq!(decode_event(&any), None);
        let any = Any {
            type_url: "containerd.events.TaskExit".into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(decode_event(&any), None);
    }
}
