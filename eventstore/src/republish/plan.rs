//! Which events of the store to publish again, and in which order, decided without I/O.
//!
//! The store is read in pages, in commit order. For every event of a page the command knows
//! whether the stream holds its `Nats-Msg-Id` and whether it still has an outbox row (then it is
//! the relay's to publish, not ours). An aggregate's missing events form one chain in version
//! order, which the [`Publisher`](crate::relay::Publisher) sends one round at a time, so version
//! `v` goes out only after `v - 1` was acknowledged (or is in the stream already).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::model::StoredEvent;

/// Why an aggregate's later events are not sent in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// An earlier version still has its outbox row: the relay will publish it, but the later
    /// versions (already acked once, so without a row) would then overtake it if sent now.
    Outbox,
    /// An earlier version was not stored by JetStream in this run (a duplicate ack, a failure).
    NotAccepted,
}

/// What to do with one page of the store.
#[derive(Debug, Default)]
pub struct PagePlan {
    /// Per aggregate, its missing events in version order, aggregates in the order of their
    /// first event in the page.
    pub chains: Vec<Vec<StoredEvent>>,
    /// Events the stream holds.
    pub in_stream: u64,
    /// Events still in the outbox: the relay publishes them.
    pub in_outbox: u64,
    /// Missing events held back because an earlier version of their aggregate is blocked.
    pub held_back: Vec<(Uuid, Blocked)>,
}

impl PagePlan {
    /// Events the plan sends.
    pub fn to_send(&self) -> usize {
        self.chains.iter().map(Vec::len).sum()
    }
}

/// Plans one page. `blocked` carries across pages: an aggregate blocked in an earlier page (or
/// whose publish failed there) keeps its later versions back, because they must not overtake it.
/// A version whose predecessor is not in the page is taken to follow one already in the stream
/// (it is older than the page, hence compared before).
pub fn plan_page(
    page: Vec<StoredEvent>,
    in_stream: &HashSet<Uuid>,
    in_outbox: &HashSet<Uuid>,
    blocked: &mut HashMap<String, Blocked>,
) -> PagePlan {
    let mut plan = PagePlan::default();
    let mut order: Vec<String> = Vec::new();
    let mut by_aggregate: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    for event in page {
        if !by_aggregate.contains_key(&event.aggregate_id) {
            order.push(event.aggregate_id.clone());
        }
        by_aggregate
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event);
    }
    for aggregate in order {
        let Some(mut events) = by_aggregate.remove(&aggregate) else {
            continue;
        };
        events.sort_by_key(|e| e.aggregate_version);
        let mut chain = Vec::new();
        for event in events {
            if in_stream.contains(&event.event_id) {
                plan.in_stream += 1;
            } else if in_outbox.contains(&event.event_id) {
                plan.in_outbox += 1;
                blocked.entry(aggregate.clone()).or_insert(Blocked::Outbox);
            } else if let Some(&reason) = blocked.get(&aggregate) {
                plan.held_back.push((event.event_id, reason));
            } else {
                chain.push(event);
            }
        }
        if !chain.is_empty() {
            plan.chains.push(chain);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{stored, versions};

    fn ids(events: &[&StoredEvent]) -> HashSet<Uuid> {
        events.iter().map(|e| e.event_id).collect()
    }

    #[test]
    fn events_the_stream_holds_are_not_sent_and_the_rest_go_in_version_order() {
        let (a1, a2, a3) = (stored("a", 1), stored("a", 2), stored("a", 3));
        let b1 = stored("b", 1);
        let in_stream = ids(&[&a1]);
        // Commit order is not version order when two transactions overlap.
        let page = vec![b1.clone(), a3.clone(), a1.clone(), a2.clone()];
        let plan = plan_page(page, &in_stream, &HashSet::new(), &mut HashMap::new());
        assert_eq!(
            versions(&plan.chains),
            [
                vec![("b".to_owned(), 1)],
                vec![("a".to_owned(), 2), ("a".to_owned(), 3)]
            ]
        );
        assert_eq!(plan.in_stream, 1);
        assert_eq!(plan.to_send(), 3);
    }

    #[test]
    fn a_stream_that_holds_everything_needs_nothing() {
        let page = vec![stored("a", 1), stored("a", 2), stored("b", 1)];
        let in_stream = page.iter().map(|e| e.event_id).collect();
        let plan = plan_page(page, &in_stream, &HashSet::new(), &mut HashMap::new());
        assert!(plan.chains.is_empty());
        assert_eq!(plan.in_stream, 3);
    }

    #[test]
    fn a_missing_version_between_two_in_the_stream_is_sent_alone() {
        let (a1, a2, a3) = (stored("a", 1), stored("a", 2), stored("a", 3));
        let in_stream = ids(&[&a1, &a3]);
        let plan = plan_page(
            vec![a1, a2.clone(), a3],
            &in_stream,
            &HashSet::new(),
            &mut HashMap::new(),
        );
        assert_eq!(versions(&plan.chains), [vec![("a".to_owned(), 2)]]);
    }

    #[test]
    fn events_in_the_outbox_are_the_relays_and_hold_back_later_versions() {
        let (a1, a2, a3) = (stored("a", 1), stored("a", 2), stored("a", 3));
        let b1 = stored("b", 1);
        let in_outbox = ids(&[&a2]);
        let mut blocked = HashMap::new();
        let plan = plan_page(
            vec![a1, a2, a3.clone(), b1],
            &HashSet::new(),
            &in_outbox,
            &mut blocked,
        );
        assert_eq!(
            versions(&plan.chains),
            [vec![("a".to_owned(), 1)], vec![("b".to_owned(), 1)]]
        );
        assert_eq!(plan.in_outbox, 1);
        assert_eq!(plan.held_back, [(a3.event_id, Blocked::Outbox)]);
        assert_eq!(blocked.get("a"), Some(&Blocked::Outbox));
    }

    #[test]
    fn an_aggregate_not_accepted_in_an_earlier_page_stays_held_back() {
        let mut blocked = HashMap::from([("a".to_owned(), Blocked::NotAccepted)]);
        let (a4, b2) = (stored("a", 4), stored("b", 2));
        let plan = plan_page(
            vec![a4.clone(), b2],
            &HashSet::new(),
            &HashSet::new(),
            &mut blocked,
        );
        assert_eq!(versions(&plan.chains), [vec![("b".to_owned(), 2)]]);
        assert_eq!(plan.held_back, [(a4.event_id, Blocked::NotAccepted)]);
    }

    #[test]
    fn a_held_back_aggregate_still_counts_what_the_stream_holds() {
        let mut blocked = HashMap::from([("a".to_owned(), Blocked::NotAccepted)]);
        let a5 = stored("a", 5);
        let in_stream = ids(&[&a5]);
        let plan = plan_page(vec![a5], &in_stream, &HashSet::new(), &mut blocked);
        assert!(plan.chains.is_empty() && plan.held_back.is_empty());
        assert_eq!(plan.in_stream, 1);
    }
}
