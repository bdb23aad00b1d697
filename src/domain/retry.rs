//! What to do after an attempt: the one place that splits outcomes into
//! completed, retry later, and final failure, and that computes backoff.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// How an attempt ended, as seen by the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The upstream answered with this status.
    Answered {
        /// HTTP status.
        status: u16,
        /// The `Retry-After` header's wait, if it sent a usable one.
        retry_after: Option<Duration>,
    },
    /// No answer in time (connect, first byte, idle or total timeout).
    TimedOut,
    /// The connection failed or broke.
    ConnectionFailed,
    /// The upstream answered with something that cannot be kept (an answer
    /// over `max_response_bytes`): asking again would fetch the same.
    Unusable,
}

/// The class of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: done.
    Success,
    /// Worth another try, waiting at least `after` if given.
    Retryable {
        /// A wait the upstream asked for.
        after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal,
}

/// Classifies an attempt: 2xx success; 408, 429, 5xx, timeouts and
/// connection errors retryable; every other status, and an answer that
/// cannot be kept, fatal.
pub fn classify(attempt: &Attempt) -> Class {
    match *attempt {
        Attempt::Answered { status, .. } if (200..300).contains(&status) => Class::Success,
        Attempt::Answered {
            status,
            retry_after,
        } if status == 408 || status == 429 || (500..600).contains(&status) => {
            Class::Retryable { after: retry_after }
        }
        Attempt::Answered { .. } | Attempt::Unusable => Class::Fatal,
        Attempt::TimedOut | Attempt::ConnectionFailed => Class::Retryable { after: None },
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Retry policy: exponential backoff with full jitter, capped, with a limit
/// on the number of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Upper bound of the first retry's delay; doubles with each retry.
    pub backoff: Duration,
    /// Upper bound of any computed delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the daemon does next with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Record the success.
    Complete,
    /// Back to pending, claimable after this delay.
    RetryAfter(Duration),
    /// Record a final failure.
    Fail(FailReason),
}

/// Why a request ends as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The upstream's answer is final (a 4xx other than 408/429).
    Fatal,
    /// Retryable, but `max_retries` retries were already made.
    RetriesExhausted,
    /// Retryable, but the retry would come after the batch's deadline.
    DeadlineTooClose,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based), given a uniform random
    /// `jitter` in [0, 1): full jitter over the doubled, capped backoff, and
    /// never less than what the upstream asked for.
    pub fn delay(&self, retry: u32, jitter: f64, asked: Option<Duration>) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let jittered = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        asked.map_or(jittered, |a| a.max(jittered))
    }

    /// Decides what follows attempt number `attempt` (1-based) of a request
    /// whose batch ends at `deadline`.
    pub fn decide(
        &self,
        outcome: &Attempt,
        attempt: u32,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
        jitter: f64,
    ) -> Decision {
        match classify(outcome) {
            Class::Success => Decision::Complete,
            Class::Fatal => Decision::Fail(FailReason::Fatal),
            Class::Retryable { .. } if attempt > self.max_retries => {
                Decision::Fail(FailReason::RetriesExhausted)
            }
            Class::Retryable { after } => {
                let delay = self.delay(attempt, jitter, after);
                let at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d));
                match at {
                    Some(at) if at < deadline => Decision::RetryAfter(delay),
                    _ => Decision::Fail(FailReason::DeadlineTooClose),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> Attempt {
        Attempt::Answered {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn statuses_are_classified() {
        for s in [200, 201, 204, 299] {
            assert_eq!(classify(&answered(s)), Class::Success, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                classify(&answered(s)),
                Class::Retryable { after: None },
                "{s}"
            );
        }
        for s in [100, 301, 400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(classify(&answered(s)), Class::Fatal, "{s}");
        }
        assert_eq!(
            classify(&Attempt::TimedOut),
            Class::Retryable { after: None }
        );
        assert_eq!(
            classify(&Attempt::ConnectionFailed),
            Class::Retryable { after: None }
        );
        assert_eq!(classify(&Attempt::Unusable), Class::Fatal);
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_doubles_with_full_jitter_and_a_cap() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        assert_eq!(
            p.delay(1, 0.999_999, None),
            Duration::from_millis(100).mul_f64(0.999_999)
        );
        assert_eq!(p.delay(2, 0.5, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, 0.5, None), Duration::from_millis(200));
        assert_eq!(p.delay(9, 0.5, None), Duration::from_millis(500));
        assert_eq!(p.delay(40, 1.0, None), Duration::from_millis(1000));
        assert_eq!(p.delay(1, 0.0, None), Duration::ZERO);
        // The upstream's wait is a floor.
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn decisions() {
        let p = RetryPolicy {
            max_retries: 2,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        assert_eq!(
            p.decide(&answered(200), 1, now, later, 0.5),
            Decision::Complete
        );
        assert_eq!(
            p.decide(&answered(400), 1, now, later, 0.5),
            Decision::Fail(FailReason::Fatal)
        );
        assert_eq!(
            p.decide(&answered(500), 1, now, later, 0.5),
            Decision::RetryAfter(Duration::from_millis(50))
        );
        assert_eq!(
            p.decide(&answered(500), 2, now, later, 0.5),
            Decision::RetryAfter(Duration::from_millis(100))
        );
        assert_eq!(
            p.decide(&answered(500), 3, now, later, 0.5),
            Decision::Fail(FailReason::RetriesExhausted)
        );
        let slow = Attempt::Answered {
            status: 429,
            retry_after: Some(Duration::from_secs(7200)),
        };
        assert_eq!(
            p.decide(&slow, 1, now, later, 0.5),
            Decision::Fail(FailReason::DeadlineTooClose)
        );
    }
}
