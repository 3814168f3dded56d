//! Which events may be published now, decided without I/O: the relay's ordering rules (see the
//! module above) as pure functions of what it holds, what it saw acknowledged and what the outbox
//! still holds.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::model::StoredEvent;

/// Events grouped by aggregate, each group in version order, without the versions `acked` says
/// this relay already published.
pub(super) fn chains(
    events: Vec<StoredEvent>,
    acked: &HashMap<String, i64>,
) -> BTreeMap<String, Vec<StoredEvent>> {
    let mut by_aggregate: BTreeMap<String, Vec<StoredEvent>> = BTreeMap::new();
    for event in events {
        if acked
            .get(&event.aggregate_id)
            .is_some_and(|&last| event.aggregate_version <= last)
        {
            continue;
        }
        by_aggregate
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event);
    }
    for chain in by_aggregate.values_mut() {
        chain.sort_by_key(|e| e.aggregate_version);
    }
    by_aggregate
}

/// Whether the first event of an aggregate's chain may be published only after asking the outbox:
/// it is not version 1 and this relay did not see the version before it acked.
pub(super) fn needs_outbox_check(
    aggregate: &str,
    chain: &[StoredEvent],
    acked: &HashMap<String, i64>,
) -> bool {
    chain.first().is_some_and(|first| {
        let version = first.aggregate_version;
        version > 1 && acked.get(aggregate) != Some(&(version - 1))
    })
}

/// What the memory path does with a batch.
#[derive(Debug, Default)]
pub struct MemoryPlan {
    /// Per aggregate, consecutive versions that may go out in this order now.
    pub chains: Vec<Vec<StoredEvent>>,
    /// Left in the outbox for the sweep: a lower version is still there, or the outbox could not be
    /// read, or a version is missing from the batch (another instance wrote it).
    pub deferred: Vec<Uuid>,
}

/// Decides, for events of the memory path grouped by [`chains`], which may be published now.
/// `lowest` is the outbox's lowest version of each aggregate that [`needs_outbox_check`], `None`
/// when it could not be read. An aggregate with no row left, or whose lowest row is above an event,
/// had that event published by someone else: it is skipped.
pub fn plan_memory(
    chains: BTreeMap<String, Vec<StoredEvent>>,
    acked: &HashMap<String, i64>,
    lowest: Option<&HashMap<String, i64>>,
) -> MemoryPlan {
    let mut plan = MemoryPlan::default();
    for (aggregate, chain) in chains {
        let Some(first) = chain.first() else {
            continue;
        };
        // The version from which this aggregate may be published: every lower one is acked.
        let start = if !needs_outbox_check(&aggregate, &chain, acked) {
            Some(first.aggregate_version)
        } else {
            lowest.map(|lowest| lowest.get(&aggregate).copied().unwrap_or(i64::MAX))
        };
        let Some(start) = start else {
            plan.deferred.extend(chain.iter().map(|e| e.event_id));
            continue;
        };
        let mut ready = Vec::new();
        let mut expected = start;
        let mut rest = chain
            .into_iter()
            .filter(|e| e.aggregate_version >= start)
            .peekable();
        while let Some(event) = rest.next_if(|e| e.aggregate_version == expected) {
            expected += 1;
            ready.push(event);
        }
        plan.deferred.extend(rest.map(|e| e.event_id));
        if !ready.is_empty() {
            plan.chains.push(ready);
        }
    }
    plan
}

/// The claimed rows that may be published now: per aggregate, the run of consecutive versions that
/// starts at the lowest version still in the outbox.
pub fn publishable(claimed: &[(Uuid, String, i64)], lowest: &HashMap<String, i64>) -> Vec<Uuid> {
    let mut by_aggregate: HashMap<&str, Vec<(i64, Uuid)>> = HashMap::new();
    for (id, aggregate, version) in claimed {
        by_aggregate
            .entry(aggregate)
            .or_default()
            .push((*version, *id));
    }
    let mut ready = Vec::new();
    for (aggregate, mut rows) in by_aggregate {
        rows.sort_unstable();
        let Some(&first) = lowest.get(aggregate) else {
            continue;
        };
        for (expected, (version, id)) in (first..).zip(rows) {
            if version != expected {
                break;
            }
            ready.push(id);
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{stored, versions};

    fn row(aggregate: &str, version: i64) -> (Uuid, String, i64) {
        (Uuid::new_v4(), aggregate.to_owned(), version)
    }

    #[test]
    fn an_aggregate_waits_for_a_lower_version_claimed_elsewhere() {
        let claimed = [row("a", 2), row("a", 3), row("b", 1)];
        let lowest = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        assert_eq!(publishable(&claimed, &lowest), [claimed[2].0]);
    }

    #[test]
    fn a_run_of_consecutive_versions_goes_out_together() {
        let claimed = [row("a", 3), row("a", 1), row("a", 2), row("a", 5)];
        let lowest = HashMap::from([("a".to_owned(), 1)]);
        let mut ready = publishable(&claimed, &lowest);
        ready.sort();
        let mut expected = vec![claimed[0].0, claimed[1].0, claimed[2].0];
        expected.sort();
        assert_eq!(ready, expected);
    }

    #[test]
    fn new_aggregates_and_successors_of_acked_versions_go_out_without_asking_the_outbox() {
        let acked = HashMap::from([("b".to_owned(), 4)]);
        let batch = vec![
            stored("a", 2),
            stored("a", 1),
            stored("b", 5),
            stored("b", 6),
        ];
        let chains = chains(batch, &acked);
        assert!(
            chains
                .iter()
                .all(|(a, c)| !needs_outbox_check(a, c, &acked))
        );
        let plan = plan_memory(chains, &acked, None);
        assert_eq!(
            versions(&plan.chains),
            [
                vec![("a".to_owned(), 1), ("a".to_owned(), 2)],
                vec![("b".to_owned(), 5), ("b".to_owned(), 6)]
            ]
        );
        assert!(plan.deferred.is_empty());
    }

    #[test]
    fn a_version_whose_predecessor_is_still_in_the_outbox_is_deferred_with_its_successors() {
        let acked = HashMap::new();
        let batch = vec![stored("a", 3), stored("a", 4), stored("b", 2)];
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        let lowest = HashMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)]);
        let plan = plan_memory(chains(batch, &acked), &acked, Some(&lowest));
        assert_eq!(versions(&plan.chains), [vec![("b".to_owned(), 2)]]);
        assert_eq!(plan.deferred, [ids[0], ids[1]]);
    }

    #[test]
    fn without_an_answer_from_the_outbox_unknown_aggregates_are_deferred() {
        let acked = HashMap::new();
        let batch = vec![stored("a", 3), stored("c", 1)];
        let deferred = batch[0].event_id;
        let plan = plan_memory(chains(batch, &acked), &acked, None);
        assert_eq!(versions(&plan.chains), [vec![("c".to_owned(), 1)]]);
        assert_eq!(plan.deferred, [deferred]);
    }

    #[test]
    fn an_event_whose_row_is_gone_was_published_by_someone_else() {
        let acked = HashMap::new();
        // a: rows 3 and 4 gone (a sweep elsewhere published them), 5 is the lowest left.
        let batch = vec![
            stored("a", 3),
            stored("a", 4),
            stored("a", 5),
            stored("b", 7),
        ];
        let lowest = HashMap::from([("a".to_owned(), 5)]);
        let plan = plan_memory(chains(batch, &acked), &acked, Some(&lowest));
        assert_eq!(versions(&plan.chains), [vec![("a".to_owned(), 5)]]);
        assert!(plan.deferred.is_empty());
    }

    #[test]
    fn a_gap_in_a_chain_defers_the_rest() {
        let acked = HashMap::new();
        let batch = vec![stored("a", 1), stored("a", 2), stored("a", 4)];
        let deferred = batch[2].event_id;
        let plan = plan_memory(chains(batch, &acked), &acked, None);
        assert_eq!(
            versions(&plan.chains),
            [vec![("a".to_owned(), 1), ("a".to_owned(), 2)]]
        );
        assert_eq!(plan.deferred, [deferred]);
    }

    #[test]
    fn versions_this_relay_saw_acked_are_not_published_again() {
        let acked = HashMap::from([("a".to_owned(), 2)]);
        let plan = plan_memory(
            chains(vec![stored("a", 2), stored("a", 3)], &acked),
            &acked,
            None,
        );
        assert_eq!(versions(&plan.chains), [vec![("a".to_owned(), 3)]]);
    }
}
