//! Tests of the resumable watch stream against a scripted source, on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::backoff::Jitter;
use crate::entity::{EntityId, Kind};

/// One step of a scripted watch.
enum Step {
    Event(RawWatchEvent),
    /// The connection breaks.
    Fail,
    /// Nothing happens for a while.
    Wait(Duration),
    /// Nothing happens ever again.
    Hang,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    List,
    Watch(i64),
}

#[derive(Default)]
struct Script {
    lists: VecDeque<Result<(Vec<Entity>, i64), ClientError>>,
    watches: VecDeque<Result<Vec<Step>, ClientError>>,
    calls: Vec<(Instant, Call)>,
}

/// A source answering from a script and recording when it was called; once the script
/// runs out, calls never complete.
#[derive(Clone, Default)]
struct ScriptedSource {
    script: Arc<Mutex<Script>>,
}

impl ScriptedSource {
    fn new(
        lists: Vec<Result<(Vec<Entity>, i64), ClientError>>,
        watches: Vec<Result<Vec<Step>, ClientError>>,
    ) -> Self {
        let script = Script {
            lists: lists.into(),
            watches: watches.into(),
            calls: Vec::new(),
        };
        Self {
            script: Arc::new(Mutex::new(script)),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.script
            .lock()
            .expect("lock")
            .calls
            .iter()
            .map(|(_, c)| *c)
            .collect()
    }

    /// Seconds since `t0` of each call to watch.
    fn watch_times(&self, t0: Instant) -> Vec<u64> {
        let script = self.script.lock().expect("lock");
        let times = script
            .calls
            .iter()
            .filter(|(_, c)| matches!(c, Call::Watch(_)));
        times
            .map(|(at, _)| at.duration_since(t0).as_secs())
            .collect()
    }

    fn record(&self, call: Call) -> std::sync::MutexGuard<'_, Script> {
        let mut script = self.script.lock().expect("lock");
        script.calls.push((Instant::now(), call));
        script
    }
}

impl WatchSource for ScriptedSource {
    fn list(
        &self,
        _filter: &ListFilter,
    ) -> impl Future<Output = Result<(Vec<Entity>, i64), ClientError>> + Send {
        let answer = self.record(Call::List).lists.pop_front();
        async move {
            match answer {
                Some(answer) => answer,
                None => futures::future::pending().await,
            }
        }
    }

    fn watch(
        &self,
        _filter: &ListFilter,
        from_revision: i64,
    ) -> impl Future<Output = Result<RawWatchStream, ClientError>> + Send {
        let answer = self.record(Call::Watch(from_revision)).watches.pop_front();
        async move {
            match answer {
                Some(answer) => answer.map(scripted_stream),
                None => futures::future::pending().await,
            }
        }
    }
}

fn scripted_stream(steps: Vec<Step>) -> RawWatchStream {
    futures::stream::unfold(VecDeque::from(steps), |mut steps| async move {
        loop {
            match steps.pop_front()? {
                Step::Event(event) => return Some((Ok(event), steps)),
                Step::Fail => return Some((Err(down()), steps)),
                Step::Wait(d) => tokio::time::sleep(d).await,
                Step::Hang => futures::future::pending::<()>().await,
            }
        }
    })
    .boxed()
}

fn down() -> ClientError {
    ClientError::Unavailable {
        address: "scripted".to_string(),
        source: "down".into(),
    }
}

fn sandbox(name: &str, node: &str, revision: i64) -> Entity {
    let id = EntityId::new(Kind::Sandbox, name).expect("id");
    let mut e = Entity::new(id, json!({"node": node}));
    e.revision = revision;
    e
}

fn put(name: &str, revision: i64) -> Step {
    Step::Event(RawWatchEvent::Put(sandbox(name, "", revision)))
}

/// Backoff of 1 s doubling to `max`, no jitter, reset after 60 s of health.
fn exact_backoff(max_secs: u64) -> StreamConfig {
    StreamConfig {
        backoff: BackoffConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(max_secs),
            jitter: Jitter::None,
            reset_after: Duration::from_secs(60),
        },
        idle_timeout: None,
    }
}

async fn next<S: Stream<Item = StreamEvent> + Unpin>(stream: &mut S) -> StreamEvent {
    tokio::time::timeout(Duration::from_secs(3600), stream.next())
        .await
        .expect("an event before the script runs dry")
        .expect("the stream never ends")
}

fn start(source: &ScriptedSource, config: StreamConfig) -> impl Stream<Item = StreamEvent> + Unpin {
    Box::pin(watch_stream_from(
        source.clone(),
        ListFilter::default(),
        config,
    ))
}

#[tokio::test(start_paused = true)]
async fn progress_moves_the_resume_point_past_changes_that_did_not_match() {
    let source = ScriptedSource::new(
        vec![Ok((vec![sandbox("a", "", 3)], 5))],
        vec![
            Ok(vec![
                put("b", 6),
                Step::Event(RawWatchEvent::Progress { revision: 10 }),
                Step::Fail,
            ]),
            Ok(vec![put("c", 12), Step::Hang]),
        ],
    );
    let mut stream = start(&source, exact_backoff(30));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Restarted {
            entities: vec![sandbox("a", "", 3)],
            revision: 5
        }
    );
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("b", "", 6))
    );
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("c", "", 12))
    );
    assert_eq!(
        source.calls(),
        [Call::List, Call::Watch(6), Call::Watch(11)]
    );
}

#[tokio::test(start_paused = true)]
async fn replayed_events_are_never_delivered_twice() {
    let a = sandbox("a", "", 6);
    let source = ScriptedSource::new(
        vec![Ok((vec![], 5))],
        vec![
            Ok(vec![put("a", 6)]),
            Ok(vec![
                put("a", 6),
                Step::Event(RawWatchEvent::Delete {
                    entity: a.clone(),
                    revision: 6,
                }),
                put("b", 7),
                Step::Hang,
            ]),
        ],
    );
    let mut stream = start(&source, exact_backoff(30));
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { .. }
    ));
    assert_eq!(next(&mut stream).await, StreamEvent::Applied(a));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("b", "", 7))
    );
    assert_eq!(source.calls(), [Call::List, Call::Watch(6), Call::Watch(7)]);
}

#[tokio::test(start_paused = true)]
async fn failed_reconnects_wait_longer_each_time_up_to_the_cap() {
    let source = ScriptedSource::new(
        vec![Ok((vec![], 1))],
        vec![
            Err(down()),
            Err(down()),
            Err(down()),
            Err(down()),
            Ok(vec![put("a", 2), Step::Hang]),
        ],
    );
    let t0 = Instant::now();
    let mut stream = start(&source, exact_backoff(4));
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { .. }
    ));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("a", "", 2))
    );
    assert_eq!(source.watch_times(t0), [0, 1, 3, 7, 11]);
    assert!(
        source.calls()[1..].iter().all(|c| *c == Call::Watch(2)),
        "always resumes at 2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_healthy_watch_resets_the_backoff_and_a_short_one_does_not() {
    let source = ScriptedSource::new(
        vec![Ok((vec![], 1))],
        vec![
            Err(down()),
            Err(down()),
            Ok(vec![Step::Wait(Duration::from_secs(10))]),
            Ok(vec![Step::Wait(Duration::from_secs(61))]),
            Ok(vec![put("a", 2), Step::Hang]),
        ],
    );
    let t0 = Instant::now();
    let mut stream = start(&source, exact_backoff(30));
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { .. }
    ));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("a", "", 2))
    );
    // Waits 1 s, 2 s; the 10 s watch was not healthy long enough (then 4 s); the 61 s one
    // was, so the last wait is back to 1 s.
    assert_eq!(source.watch_times(t0), [0, 1, 3, 17, 79]);
}

#[tokio::test(start_paused = true)]
async fn compaction_relists_at_once_and_resumes_after_the_new_list() {
    let source = ScriptedSource::new(
        vec![
            Ok((vec![sandbox("a", "", 3), sandbox("b", "", 4)], 5)),
            Ok((vec![sandbox("a", "", 3)], 20)),
        ],
        vec![
            Ok(vec![Step::Event(RawWatchEvent::Compacted {
                compact_revision: 15,
            })]),
            Ok(vec![put("c", 21), Step::Hang]),
        ],
    );
    let t0 = Instant::now();
    let mut stream = start(&source, exact_backoff(30));
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { revision: 5, .. }
    ));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Restarted {
            entities: vec![sandbox("a", "", 3)],
            revision: 20
        }
    );
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("c", "", 21))
    );
    assert_eq!(
        source.calls(),
        [Call::List, Call::Watch(6), Call::List, Call::Watch(21)]
    );
    assert_eq!(
        source.watch_times(t0),
        [0, 0],
        "no delay after a first compaction"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_lists_are_retried_with_backoff() {
    let source = ScriptedSource::new(
        vec![Err(down()), Err(down()), Ok((vec![], 1))],
        vec![Ok(vec![Step::Hang])],
    );
    let t0 = Instant::now();
    let mut stream = start(&source, exact_backoff(30));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Restarted {
            entities: vec![],
            revision: 1
        }
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(source.calls(), [Call::List, Call::List, Call::List]);
}

#[tokio::test(start_paused = true)]
async fn a_put_that_leaves_the_filter_is_delivered_as_a_deletion() {
    let moved = sandbox("s", "node-b", 6);
    let source = ScriptedSource::new(
        vec![Ok((vec![sandbox("s", "node-a", 3)], 5))],
        vec![Ok(vec![
            Step::Event(RawWatchEvent::Put(moved.clone())),
            Step::Hang,
        ])],
    );
    let filter = ListFilter {
        node: Some("node-a".to_string()),
        ..ListFilter::default()
    };
    let mut stream = Box::pin(watch_stream_from(source.clone(), filter, exact_backoff(30)));
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { .. }
    ));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Deleted {
            entity: moved,
            revision: 6
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_silent_past_the_idle_timeout_is_reopened_from_the_cursor() {
    let source = ScriptedSource::new(
        vec![Ok((vec![], 5))],
        vec![
            Ok(vec![put("a", 6), Step::Hang]),
            Ok(vec![
                Step::Event(RawWatchEvent::Progress { revision: 9 }),
                Step::Hang,
            ]),
            Ok(vec![put("b", 12), Step::Hang]),
        ],
    );
    let config = StreamConfig {
        idle_timeout: Some(Duration::from_secs(60)),
        ..exact_backoff(30)
    };
    let t0 = Instant::now();
    let mut stream = start(&source, config);
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { .. }
    ));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("a", "", 6))
    );
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("b", "", 12))
    );
    // Silent 60 s after the put: reopened at once (the watch was healthy that long), and
    // again 60 s after the progress event.
    assert_eq!(source.watch_times(t0), [0, 60, 120]);
    assert_eq!(
        source.calls()[1..],
        [Call::Watch(6), Call::Watch(7), Call::Watch(10)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_refused_outright_starts_over_with_a_fresh_list() {
    let refused = ClientError::Invalid("revision 6 is compacted".to_string());
    let source = ScriptedSource::new(
        vec![Ok((vec![sandbox("a", "", 3)], 5)), Ok((vec![], 30))],
        vec![Err(refused), Ok(vec![put("b", 31), Step::Hang])],
    );
    let mut stream = start(&source, exact_backoff(30));
    assert!(matches!(
        next(&mut stream).await,
        StreamEvent::Restarted { revision: 5, .. }
    ));
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Restarted {
            entities: vec![],
            revision: 30
        }
    );
    assert_eq!(
        next(&mut stream).await,
        StreamEvent::Applied(sandbox("b", "", 31))
    );
    assert_eq!(
        source.calls(),
        [Call::List, Call::Watch(6), Call::List, Call::Watch(31)]
    );
}
