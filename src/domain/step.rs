//! Multi-step responses: one model call or tool call inside a response,
//! chained by `prev_step_id` and scoped by `parent_step_id`.

use super::IllegalTransition;
use super::ids::{RequestId, StepId};
use chrono::{DateTime, Utc};
use serde_json::Value;

text_enum!(
    /// What a step does.
    StepKind {
        /// A call to the model.
        ModelCall => "model_call",
        /// A call to a tool (which may open a sub-loop of its own steps).
        ToolCall => "tool_call",
    }
);

text_enum!(
    /// Where a step is in its life.
    StepState {
        /// Created, not yet started.
        Pending => "pending",
        /// Started by a worker.
        Processing => "processing",
        /// Finished with a response payload; terminal.
        Completed => "completed",
        /// Finished with an error payload; terminal.
        Failed => "failed",
        /// Cancelled before finishing; terminal.
        Canceled => "canceled",
    }
);

impl StepState {
    /// Whether nothing can change this state any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// The transition table for steps. `Processing -> Processing` is allowed so
    /// that marking a step as started is idempotent under crash recovery.
    pub const fn can_become(self, to: Self) -> bool {
        use StepState::*;
        matches!(
            (self, to),
            (Pending | Processing, Processing)
                | (Processing, Completed)
                | (Processing, Pending)
                | (Pending | Processing, Failed)
                | (Pending | Processing, Canceled)
        )
    }

    /// `Ok` when `self -> to` is legal, else the typed error.
    pub fn check(self, to: Self) -> Result<(), IllegalTransition> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(IllegalTransition {
                kind: "step",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    /// The states a step may be in for a change to `to` to be legal, for SQL guards.
    pub fn sources_of(to: Self) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|from| from.can_become(to))
            .map(|s| s.as_str())
            .collect()
    }
}

/// What is needed to create a step.
#[derive(Debug, Clone)]
pub struct CreateStepInput {
    /// A caller-chosen id (for idempotent re-creation), or `None` for a new one.
    pub id: Option<StepId>,
    /// The request the step belongs to.
    pub request_id: RequestId,
    /// The step before it in its scope, if any.
    pub prev_step_id: Option<StepId>,
    /// The tool call whose sub-loop this step is in, or `None` at top level.
    pub parent_step_id: Option<StepId>,
    /// Model call or tool call.
    pub step_kind: StepKind,
    /// Position among all of the request's steps.
    pub step_sequence: i64,
    /// What was (or will be) sent.
    pub request_payload: Value,
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseStep {
    /// The step's id.
    pub id: StepId,
    /// The request the step belongs to.
    pub request_id: RequestId,
    /// The step before it in its scope.
    pub prev_step_id: Option<StepId>,
    /// The tool call whose sub-loop this step is in.
    pub parent_step_id: Option<StepId>,
    /// Model call or tool call.
    pub step_kind: StepKind,
    /// Position among all of the request's steps.
    pub step_sequence: i64,
    /// Where it is in its life.
    pub state: StepState,
    /// What was sent.
    pub request_payload: Value,
    /// What came back, once completed.
    pub response_payload: Option<Value>,
    /// Why it failed, once failed.
    pub error: Option<Value>,
    /// How many times it was requeued for retry.
    pub retry_attempt: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was (last) started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub canceled_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>().unwrap(), *s);
        }
        for k in StepKind::ALL {
            assert_eq!(k.as_str().parse::<StepKind>().unwrap(), *k);
        }
    }

    #[test]
    fn terminal_steps_never_change() {
        for from in StepState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in StepState::ALL {
                assert!(from.check(*to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn sources_match_the_table() {
        assert_eq!(
            StepState::sources_of(StepState::Completed),
            vec!["processing"]
        );
        assert_eq!(
            StepState::sources_of(StepState::Processing),
            vec!["pending", "processing"]
        );
        assert_eq!(
            StepState::sources_of(StepState::Pending),
            vec!["processing"]
        );
    }
}
