//! Saga deadlines: how long an open order may wait for its next step before the pipeline ends it.
//!
//! An order that is Pending waits for its payment, one that is Paid for its review. Each step has a
//! deadline counted from the moment the order entered its status (the stored time of its last
//! event); past it, the order is cancelled with a reason that names the step and the deadline.
//! Nothing here reads a clock: the caller brings `now`.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::events::OrderEvent;
use crate::order::{Order, OrderStatus};

/// A step of the saga that an open order waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A Pending order waits for paymentworker's debit (or failure).
    Payment,
    /// A Paid order waits for reviewworker's approval (or rejection).
    Review,
}

impl Step {
    pub const ALL: [Step; 2] = [Step::Payment, Step::Review];

    /// `payment` or `review`: in reasons, logs and deterministic ids. Never change them: stored ids
    /// depend on them.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Payment => "payment",
            Step::Review => "review",
        }
    }

    /// The status of an order that waits for this step.
    pub fn status(self) -> OrderStatus {
        match self {
            Step::Payment => OrderStatus::Pending,
            Step::Review => OrderStatus::Paid,
        }
    }

    /// The step an order in `status` waits for; `None` for a final status.
    pub fn awaited_in(status: OrderStatus) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.status() == status)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each step may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From `created` to the payment decision.
    pub payment: Duration,
    /// From `paymentdebited` to the review decision.
    pub review: Duration,
}

impl Deadlines {
    /// The documented defaults: 30 s to pay, 60 s to review.
    pub const DEFAULT: Deadlines = Deadlines {
        payment: Duration::from_secs(30),
        review: Duration::from_secs(60),
    };

    /// The deadline of `step`.
    pub fn of(&self, step: Step) -> Duration {
        match step {
            Step::Payment => self.payment,
            Step::Review => self.review,
        }
    }

    /// When the deadline of an order that entered `status` at `since` falls; `None` when the
    /// status is final (nothing is awaited).
    pub fn due(&self, status: OrderStatus, since: OffsetDateTime) -> Option<Due> {
        let step = Step::awaited_in(status)?;
        let deadline = self.of(step);
        Some(Due {
            step,
            deadline,
            at: after(since, deadline),
        })
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines::DEFAULT
    }
}

/// `since + deadline`, saturating instead of panicking on a date out of range.
fn after(since: OffsetDateTime, deadline: Duration) -> OffsetDateTime {
    let deadline = time::Duration::try_from(deadline).unwrap_or(time::Duration::MAX);
    since.saturating_add(deadline)
}

/// The deadline an open order is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub step: Step,
    pub deadline: Duration,
    /// The moment the step is overdue: from then on the order is cancelled.
    pub at: OffsetDateTime,
}

impl Due {
    /// True at and after the deadline.
    pub fn is_overdue(&self, now: OffsetDateTime) -> bool {
        now >= self.at
    }

    /// The reason of the cancellation, e.g. `payment not received within the 30s payment deadline`.
    pub fn reason(&self) -> String {
        deadline_reason(self.step, self.deadline)
    }
}

/// The reason a deadline cancel gives, naming the step and the deadline.
pub fn deadline_reason(step: Step, deadline: Duration) -> String {
    format!(
        "{} within the {} {step} deadline",
        missed(step),
        format_duration(deadline)
    )
}

fn missed(step: Step) -> &'static str {
    match step {
        Step::Payment => "payment not received",
        Step::Review => "review not completed",
    }
}

/// The step a reason written by [`deadline_reason`] names; `None` for any other reason (a
/// customer's cancel, say). For reports over stored events.
pub fn deadline_step(reason: &str) -> Option<Step> {
    Step::ALL.into_iter().find(|step| {
        reason.starts_with(&format!("{} within the ", missed(*step)))
            && reason.ends_with(&format!(" {step} deadline"))
    })
}

/// The one duration grammar of the project (configuration, orderctl, the dev tools), the inverse
/// of [`format_duration`] for single units. A number with a unit: `1500ms`, `30s`, `1.5s`, `2m`, `1h`. A bare number is refused: for a
/// deadline, 30 meaning milliseconds where seconds were meant would cancel every order.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "{text:?} needs a unit: e.g. {trimmed}s, {trimmed}ms or {trimmed}m"
            ));
        }
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 1500ms or 2m"))?;
    Duration::try_from_secs_f64(number * scale).map_err(|_| format!("{text:?} is out of range"))
}

/// A duration as people write it: `30s`, `2m`, `1m30s`, `1500ms`, `1h`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let mut seconds = millis / 1000;
    let mut text = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if seconds >= size {
            text.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    if seconds > 0 {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// What the deadline of an order calls for, at some moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineDecision {
    /// The awaited step is overdue: append this `cancelled` event at the order's version.
    Cancel { due: Due, event: OrderEvent },
    /// The awaited step still has time.
    NotYet(Due),
    /// The order is final: no step is awaited, nothing is due ever again.
    Closed(OrderStatus),
}

impl Order {
    /// Decides on the order's deadline at `now`: `since` is when the order entered its current
    /// status (for an open order, the stored time of its last event: `created` or
    /// `paymentdebited`). An overdue order is cancelled through [`Order::cancel`], with a reason
    /// naming the step and its deadline.
    pub fn enforce_deadline(
        &self,
        since: OffsetDateTime,
        now: OffsetDateTime,
        deadlines: &Deadlines,
    ) -> DeadlineDecision {
        let Some(due) = deadlines.due(self.status, since) else {
            return DeadlineDecision::Closed(self.status);
        };
        if !due.is_overdue(now) {
            return DeadlineDecision::NotYet(due);
        }
        match self.cancel(due.reason()) {
            Ok(event) => DeadlineDecision::Cancel { due, event },
            // Unreachable while Pending and Paid are both open and cancellable; kept total.
            Err(_) => DeadlineDecision::Closed(self.status),
        }
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn a_duration_is_a_number_with_a_unit_and_a_bare_number_is_refused() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        let err = parse_duration("30").expect_err("a bare number is refused");
        assert!(err.contains("30s"), "{err}");
        for bad in ["soon", "3 days", "-1s", "1.5.2s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for duration in [Duration::from_millis(1500), Duration::from_secs(120)] {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }
}
