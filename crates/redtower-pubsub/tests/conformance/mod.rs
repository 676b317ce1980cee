//! The conformance suite: every check is written once (`checks`, `limits`) and run on each
//! backend by `conformance!` (`tests/memory.rs`, `tests/redis.rs`), with the SSE client the
//! checks read streams with (`client`).

#![allow(dead_code, unreachable_pub)]

pub mod checks;
mod client;
pub mod limits;

pub use client::{SseClient, WAIT, json_n};

/// Runs every conformance check against the backend built by `$make` (an expression giving a
/// `checks::Make`).
#[macro_export]
macro_rules! conformance {
    ($make:expr) => {
        $crate::conformance!($make;
            resume_replays_exactly_the_missed_events,
            live_without_cursor,
            resume_from_an_empty_channel,
            publishes_racing_the_replay,
            new_epoch_resyncs,
            too_far_behind_resyncs,
            multi_channel,
            auth_and_validation,
            slow_consumer_is_caught_up,
            slow_consumer_beyond_history_resyncs,
            shutdown_ends_streams,
            fan_out_shares_one_subscription,
            publish_route,
            publish_token_returns_the_first_event,
            history_is_bounded_by_count_and_bytes,
            payload_limit,
            channel_limit_and_flood,
            connection_limits,
            access_ends_revokes_the_stream,
            server_owned_channels_refuse_http_publish,
            hostile_last_event_ids,
            replay_byte_cap_per_open,
            trace_context_travels_with_events,
        );
    };
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::checks::$name($make).await
            }
        )*
    };
}
