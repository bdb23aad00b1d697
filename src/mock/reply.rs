//! Scripted answers, and the fixed content of the mock's default answer.

use super::*;

/// A scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockReply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers (the content type is set unless given here).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// Bytes sent instead of `body` when set (for answers that are not
    /// UTF-8); not with `sse`.
    pub raw_body: Option<Vec<u8>>,
    /// Wait before answering; overrides [`MockBehavior::latency`].
    pub delay: Option<Duration>,
    /// Never answer: the connection stays open until the client gives up
    /// (or the mock shuts down).
    pub hang: bool,
    /// Answer as `text/event-stream`: a `chat.completion` body is sent as
    /// `chat.completion.chunk` events ending in `[DONE]`; any other body is
    /// sent as is (write the SSE text yourself).
    pub sse: bool,
    /// Break the connection after the status line and the first half of
    /// the body: the client sees its answer cut off.
    pub reset: bool,
}

impl Default for MockReply {
    fn default() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
            raw_body: None,
            delay: None,
            hang: false,
            sse: false,
            reset: false,
        }
    }
}

/// The text of every mock answer.
pub const MOCK_CONTENT: &str = "This is a mock answer from fusillade.";
/// Prompt tokens reported in every mock answer's usage.
pub const MOCK_PROMPT_TOKENS: u64 = 10;
/// Completion tokens reported in every mock answer's usage.
pub const MOCK_COMPLETION_TOKENS: u64 = 7;

pub(super) static REPLY_SEQ: AtomicU64 = AtomicU64::new(1);

impl MockReply {
    /// 200 with an OpenAI `chat.completion` echoing the call's model, with
    /// usage `{prompt_tokens: 10, completion_tokens: 7, total_tokens: 17}`.
    pub fn ok_for(call: &MockCall) -> Self {
        Self::ok_for_model(&call.model)
    }

    /// 200 with an OpenAI `chat.completion` for `model` (see [`MockReply::ok_for`]).
    pub fn ok_for_model(model: &str) -> Self {
        Self {
            body: completion_json(model),
            ..Self::default()
        }
    }

    /// This status and body.
    pub fn status(code: u16, body: impl Into<String>) -> Self {
        Self {
            status: code,
            body: body.into(),
            ..Self::default()
        }
    }

    /// This status and these bytes as the body, whatever they are.
    pub fn bytes(code: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: code,
            raw_body: Some(body.into()),
            ..Self::default()
        }
    }

    /// A call that never gets an answer.
    pub fn hanging() -> Self {
        Self::default().hang()
    }

    /// The same reply with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same reply, never sent.
    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    /// The same reply after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The same reply as an SSE stream (see [`MockReply::sse`]).
    pub fn with_sse(mut self) -> Self {
        self.sse = true;
        self
    }

    /// The same reply, cut off halfway (see [`MockReply::reset`]).
    pub fn with_reset(mut self) -> Self {
        self.reset = true;
        self
    }
}
