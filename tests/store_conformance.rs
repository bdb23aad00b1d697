//! One set of store and daemon tests for every backend (the pattern of
//! River's driver tests): each case is a generic function that speaks to the
//! store through its traits only (and to the daemon through
//! `fusillade::daemon`), and each backend runs every case through a macro, so
//! a new backend gets the whole suite by adding one arm. Behaviour only
//! PostgreSQL has (several daemons, LISTEN/NOTIFY, read replicas, pools,
//! constraint names, raw rows) stays in the other `store_*` and `daemon_*`
//! files.
//!
//! The backends are PostgreSQL and the embedded SQLite. Tests are named
//! `BACKEND::SUBJECT::CASE` (`postgres::files::...`, `sqlite::files::...`), so
//! `cargo nextest run --test store_conformance` shows the count per backend.
//!
//! A backend arm is a macro like [`on_postgres`]: it takes the list of
//! [`for_each_case`] and expands each case on a fresh store of its own, and
//! the backend implements [`conformance::Backend`].

mod common;
mod conformance;

/// Every case, by subject (a module of `tests/conformance/`): the one list
/// each backend's arm expands.
macro_rules! for_each_case {
    ($run:ident) => {
        $run! {
            answers: [
                answers_text_cannot_hold_land_exactly_and_never_block_the_batch,
                an_oversized_answer_fails_its_line_without_a_retry,
            ],
            api: [
                retry_reopens_a_completed_batch_and_requeues_only_failed_requests,
                retry_is_a_conflict_unless_completed_or_expired,
                retry_of_a_completed_batch_without_failures_changes_nothing,
                live_counts_come_from_unfinished_requests_only,
                file_expiry_can_be_set_after_upload,
            ],
            batches: [
                a_valid_file_gives_a_running_batch_with_one_request_per_line,
                the_window_sets_the_deadline,
                a_file_with_refused_lines_gives_a_failed_batch,
                only_the_first_errors_are_listed_with_a_note,
                endpoint_mismatches_beyond_the_cap_are_noted_too,
                lines_for_another_endpoint_fail_the_batch,
                an_empty_file_gives_a_failed_batch,
                bad_parameters_are_refused_before_anything_is_stored,
                the_input_file_must_be_the_owners_live_input_file,
                an_idempotency_key_returns_the_first_batch,
                concurrent_creates_with_one_key_make_one_batch,
                creates_sent_at_once_each_get_their_own_answer,
                batches_of_one_file_have_their_own_requests,
            ],
            coalescing: [
                a_claim_takes_requests_of_one_prefix_together,
                without_grouping_a_claim_takes_line_order,
                a_tight_window_batch_goes_before_a_large_day_long_one,
                a_prefix_group_sticks_to_one_replica,
                without_grouping_calls_are_dealt_to_the_replicas_in_turn,
                a_models_own_urls_replace_the_upstream_route,
                grouping_raises_the_prefix_cache_hit_rate,
                a_replica_that_refuses_connections_is_left_out,
                a_scoped_claim_of_a_private_batch_takes_whole_prefix_groups,
            ],
            coalescing_identical: [
                identical_temperature_zero_lines_are_sent_once_and_each_answered,
                lines_at_a_temperature_are_always_sent,
                coalesce_never_sends_every_line,
                single_input_embeddings_share_calls_and_a_bad_input_fails_alone,
                finish_counts_lines_answered_by_a_shared_call,
            ],
            daemon_runtime: [
                one_daemon_fills_each_model_to_its_limit_and_no_further,
                outcomes_are_retried_or_final_as_the_rules_say,
                cancel_aborts_calls_in_flight_and_ends_the_batch_within_two_seconds,
                a_reloaded_limit_applies_while_running,
                stopping_lets_calls_finish_within_the_grace_period,
                stopping_releases_calls_still_running_after_the_grace_period,
            ],
            daemons: [
                register_records_a_running_daemon,
                heartbeat_updates_counters_and_time,
                a_stopped_daemon_cannot_heartbeat_or_stop_again,
                a_dead_daemon_gets_a_conflict,
                an_unknown_daemon_is_not_found,
                list_daemons_puts_running_ones_first_newest_first,
                live_daemons_counts_running_ones_with_fresh_heartbeats,
            ],
            dashboard: [
                requests_in_one_state_page_in_line_order,
                a_request_detail_shows_its_input_and_answer,
                a_batch_sample_counts_calls_in_flight_and_groups_failures,
                model_loads_show_waiting_and_running_work,
            ],
            file_access: [
                owners_see_only_their_files,
                delete_hides_a_file_once,
                list_files_filters_orders_and_paginates,
                list_files_by_purpose,
            ],
            files: [
                a_valid_file_becomes_templates,
                each_refused_line_is_numbered_and_the_other_lines_are_kept,
                a_duplicate_custom_id_refuses_the_later_line,
                an_empty_file_is_one_error_without_a_line,
                blank_lines_are_skipped_but_counted,
                crlf_endings_bom_and_a_last_line_without_newline_are_accepted,
                body_text_is_stored_exactly_as_written,
                escaped_custom_id_and_model_are_unescaped,
                a_line_over_the_limit_is_refused_and_parsing_goes_on,
                invalid_utf8_is_refused_by_line,
                a_file_over_the_size_limit_stores_nothing,
                only_the_first_errors_are_kept_but_all_are_counted,
                content_of_a_large_input_file_is_the_exact_upload,
                a_bom_does_not_count_towards_the_line_limit,
                every_kind_of_line_downloads_exactly_at_any_chunk_size,
            ],
            lifecycle: [
                an_upload_reads_back_byte_for_byte,
                a_batch_has_one_request_per_line,
                an_idempotency_key_answers_with_the_first_batch,
                cancel_with_nothing_in_flight_ends_the_batch_at_once,
                cancel_with_a_call_in_flight_is_finished_by_the_finalizer,
                finished_requests_complete_the_batch_and_fill_its_files,
                a_finish_names_the_batches_it_fills_which_complete_at_once,
                get_batch_respects_the_owner,
                list_batches_filters_and_paginates,
                cancel_ends_pending_requests_at_once,
                cancel_with_a_request_in_flight_waits_for_it,
                cancel_of_an_ended_batch_is_a_conflict,
                request_counts_by_state,
            ],
            queue: [
                slots_of_all_daemons_stay_within_each_models_limit,
                slots_never_drop_below_calls_in_flight,
                claim_honours_the_total_cap_and_defaults,
                a_private_batch_is_claimed_only_by_its_scoped_daemon,
                a_scoped_claim_takes_only_its_batch,
                claim_prefers_the_earlier_deadline,
                finish_writes_results_once_and_rejects_stale_attempts,
                requeue_delays_retries_and_counts_them,
                rescue_returns_claims_of_dead_daemons_only,
                a_dead_daemon_claims_nothing_and_its_slots_count_until_forgotten,
                a_rescuer_never_declares_itself_dead_nor_anyone_without_a_window,
                a_retired_daemon_returns_its_claims_at_once_and_its_slots_a_window_later,
                finalize_completes_and_cancels,
                a_new_batch_wakes_listeners,
            ],
            escalation: [
                routed_models_are_recorded_per_attempt_and_kept_in_the_result,
                a_model_only_escalated_requests_wait_for_gets_slots_within_its_limit,
                a_daemon_sends_requests_near_their_deadline_as_the_escalation_model,
            ],
            requests: [
                get_request_shows_the_request_and_then_its_result,
                list_requests_pages_in_line_order,
                output_and_error_lines_have_openai_shapes,
                streams_cross_pages_and_give_every_line_once,
                streams_without_results_are_empty,
                large_results_stream_in_pages_bounded_by_bytes,
                bodies_text_cannot_hold_are_stored_byte_for_byte,
            ],
            response_steps: [
                steps_are_read_back_and_listed_by_chain_and_scope,
                a_step_ends_once_and_a_retry_goes_back_to_pending,
                a_second_successor_of_one_kind_is_refused,
                a_refused_step_change_says_why,
            ],
            settle: [
                a_refused_result_is_failed_alone_and_the_rest_of_its_write_lands,
                a_row_whose_failure_is_refused_too_is_given_up,
            ],
            sharing: [
                a_models_requests_are_shared_between_owners_by_weight,
                what_an_owner_cannot_take_is_shared_again,
                an_owner_holding_requests_gets_fewer_of_the_next_claim,
                a_newcomer_is_claimed_while_the_queue_is_full_of_others,
                a_route_pause_is_kept_until_it_ends_and_a_shorter_one_does_not_shorten_it,
            ],
        }
    };
}

/// PostgreSQL: each case on a fresh database of its own.
macro_rules! on_postgres {
    ($($subject:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        mod postgres {
            $(
                mod $subject {
                    $(
                        #[sqlx::test]
                        async fn $case(pool: sqlx::PgPool) {
                            let store = crate::common::store(&pool).await;
                            crate::conformance::$subject::$case(&store).await;
                        }
                    )*
                }
            )*
        }
    };
}

/// SQLite: each case on a fresh database file in a temp dir of its own
/// (removed when the case ends).
macro_rules! on_sqlite {
    ($($subject:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        mod sqlite {
            $(
                mod $subject {
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $case() {
                            let db = crate::common::sqlite::TempDb::new();
                            let store = db.store().await;
                            crate::conformance::$subject::$case(&store).await;
                        }
                    )*
                }
            )*
        }
    };
}

for_each_case!(on_postgres);
for_each_case!(on_sqlite);

impl conformance::Backend for fusillade::PostgresStore {
    fn with_limits(&self, limits: fusillade::IngestLimits) -> Self {
        self.clone().with_limits(limits)
    }

    async fn refuse_results_where(&self, condition: &str) {
        // SQLSTATE 23514: a check constraint broken, a refusal of the data.
        crate::common::fail_results_where(&self.pools().primary, condition, "23514").await;
    }
}

impl conformance::Backend for fusillade::store::SqliteStore {
    fn with_limits(&self, limits: fusillade::IngestLimits) -> Self {
        self.clone().with_limits(limits)
    }

    async fn refuse_results_where(&self, condition: &str) {
        use sqlx::ConnectOptions;
        // RAISE(ABORT) is SQLITE_CONSTRAINT_TRIGGER: a refusal of the data.
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.path())
            .connect()
            .await
            .unwrap();
        sqlx::query(&format!(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON request_results \
             WHEN {condition} BEGIN SELECT RAISE(ABORT, 'planted refusal'); END"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}
