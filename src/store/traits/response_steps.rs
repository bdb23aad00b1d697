//! The seed's `ResponseStepStore`: the steps of multi-step responses.

use crate::domain::ids::{RequestId, StepId};
use crate::domain::step::{CreateStepInput, ResponseStep};
use crate::store::Result;
use serde_json::Value;
use std::future::Future;

/// Storage of response steps. Every state change is checked against
/// [`StepState::can_become`](crate::domain::step::StepState::can_become)
/// in its SQL guard; a refused change is a
/// [`StoreError::Conflict`](crate::store::StoreError::Conflict), a missing
/// step [`StoreError::NotFound`](crate::store::StoreError::NotFound).
pub trait ResponseStepStore: Send + Sync {
    /// Creates a step; a second successor with the same (request, scope,
    /// predecessor, kind) is refused by a unique index.
    fn create_step(&self, input: CreateStepInput) -> impl Future<Output = Result<StepId>> + Send;
    /// One step.
    fn get_step(&self, id: StepId) -> impl Future<Output = Result<Option<ResponseStep>>> + Send;
    /// All steps of a request, by sequence.
    fn list_chain(
        &self,
        request_id: RequestId,
    ) -> impl Future<Output = Result<Vec<ResponseStep>>> + Send;
    /// The steps of one scope: top level (`None`) or the sub-loop of a tool call.
    fn list_scope(
        &self,
        request_id: RequestId,
        parent_step_id: Option<StepId>,
    ) -> impl Future<Output = Result<Vec<ResponseStep>>> + Send;
    /// Marks a step started; idempotent while it is processing.
    fn mark_step_processing(&self, id: StepId) -> impl Future<Output = Result<()>> + Send;
    /// Records a processing step's response.
    fn complete_step(&self, id: StepId, response: Value)
    -> impl Future<Output = Result<()>> + Send;
    /// Records why a pending or processing step failed.
    fn fail_step(&self, id: StepId, error: Value) -> impl Future<Output = Result<()>> + Send;
    /// Cancels a pending or processing step.
    fn cancel_step(&self, id: StepId) -> impl Future<Output = Result<()>> + Send;
    /// Returns a processing step to pending for another attempt.
    fn requeue_step_for_retry(&self, id: StepId) -> impl Future<Output = Result<()>> + Send;
}
