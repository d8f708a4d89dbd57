//! Shared part of the store test binaries: one test per check of the store conformance suite, over a store the including file opens.

/// Expands to one `#[tokio::test]` per conformance check that needs nothing but a fresh
/// store. `$open` is an expression (it may `.await`) giving `(guard, store)`: the guard
/// keeps what the store lives on (a temp dir, an etcd cluster) until after the store is
/// closed. Each test fails if the check or the close fails.
macro_rules! store_conformance_tests {
    ($open:expr) => {
        store_conformance_tests!(@each $open;
            revisions_increase,
            create_only_conflicts_when_it_exists,
            stale_update_conflicts,
            patch_status_needs_the_current_revision,
            a_failing_op_leaves_the_batch_unapplied,
            putting_the_same_spec_is_a_no_op,
            watch_replays_history_then_streams_live,
            watches_see_deletes,
            slow_watcher_loses_nothing,
            an_unfenced_delete_fenced_is_a_delete,
        );
    };
    (@each $open:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_guard, store) = $open;
            converge::server::store::conformance::$name(&store)
                .await
                .expect("store contract");
            store.close().await.expect("close");
        }
    )*};
}

pub(crate) use store_conformance_tests;
