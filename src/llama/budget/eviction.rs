//! Which decoded layer to evict when a decode needs room: the one needed furthest ahead.
//!
//! Graphs compute a model's layers in the same order every time (token embedding, `blk.0`,
//! `blk.1`, ..., the output head), so the runtime records, for each layer, the layer that came
//! after it in earlier graphs ([`super::runtime`]'s `next_group`). Following that chain from
//! the layer being computed tells how many layer changes ahead every layer is needed again
//! ([`groups_ahead`]); eviction takes the one needed furthest ahead ([`victim`]), an unseen
//! layer first, then the least recently used. For a model computed layer after layer, least
//! recently used alone would evict exactly the layer needed next. Pure functions over group
//! ids: the runtime filters out what the pending range of graph nodes needs.

use std::collections::HashMap;

/// How many layer changes ahead each group is next needed, following the order `next` seen
/// in earlier graphs from `current` (which is 0 steps ahead).
pub fn groups_ahead(current: Option<u32>, next: &HashMap<u32, u32>) -> HashMap<u32, u32> {
    let mut ahead = HashMap::new();
    let Some(mut g) = current else {
        return ahead;
    };
    let mut steps = 0;
    while let std::collections::hash_map::Entry::Vacant(e) = ahead.entry(g) {
        e.insert(steps);
        let Some(&n) = next.get(&g) else {
            break;
        };
        g = n;
        steps += 1;
    }
    ahead
}

/// A decoded tensor that may be evicted (not needed by the pending range of nodes).
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub slot: usize,
    /// Its group (layer).
    pub group: u32,
    /// Clock of its last use (higher is more recent).
    pub last_use: u64,
}

/// Layers evicted last, or (with `spare`, for the prefetcher) never: the one being computed
/// and the one being prefetched.
#[derive(Clone, Copy, Debug, Default)]
pub struct Protected {
    pub current: Option<u32>,
    pub prefetching: Option<u32>,
    pub spare: bool,
}

impl Protected {
    fn covers(&self, g: u32) -> bool {
        Some(g) == self.current || Some(g) == self.prefetching
    }
}

/// The slot to evict: unprotected before protected, then the group needed furthest ahead by
/// `ahead` (from [`groups_ahead`]; groups not in it, never seen after the current one, count
/// as furthest), then the least recently used; the first of equals. `None` when nothing may
/// go.
pub fn victim(
    candidates: impl IntoIterator<Item = Candidate>,
    ahead: &HashMap<u32, u32>,
    protect: Protected,
) -> Option<usize> {
    candidates
        .into_iter()
        .filter(|c| !(protect.spare && protect.covers(c.group)))
        .min_by_key(|c| {
            let next_use = ahead.get(&c.group).copied().unwrap_or(u32::MAX);
            (
                protect.covers(c.group),
                std::cmp::Reverse(next_use),
                c.last_use,
            )
        })
        .map(|c| c.slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_ahead_follows_the_cycle_from_the_current_layer() {
        // token_embd (100) -> blk.0 -> blk.1 -> blk.2 -> token_embd (as the output head)
        let next: HashMap<u32, u32> = [(100, 0), (0, 1), (1, 2), (2, 100)].into();
        let ahead = groups_ahead(Some(1), &next);
        assert_eq!(ahead[&1], 0);
        assert_eq!(ahead[&2], 1);
        assert_eq!(ahead[&100], 2);
        // Just computed, so needed again last.
        assert_eq!(ahead[&0], 3);
        assert_eq!(ahead.len(), 4);
    }

    #[test]
    fn groups_ahead_without_history() {
        assert!(groups_ahead(None, &HashMap::new()).is_empty());
        let ahead = groups_ahead(Some(5), &HashMap::new());
        assert_eq!(ahead.len(), 1);
        // A chain that ends (a layer not seen followed by anything yet).
        let ahead = groups_ahead(Some(0), &[(0, 1), (1, 2)].into());
        assert_eq!((ahead[&0], ahead[&1], ahead[&2]), (0, 1, 2));
    }

    /// One tensor per group, in slot order = `groups`, used at the given clocks.
    fn cands(groups: &[(u32, u64)]) -> Vec<Candidate> {
        groups
            .iter()
            .enumerate()
            .map(|(slot, &(group, last_use))| Candidate {
                slot,
                group,
                last_use,
            })
            .collect()
    }

    /// The order a 4-layer model with a tied embedding/output head (group 100) is computed in.
    fn cycle() -> HashMap<u32, u32> {
        [(100, 0), (0, 1), (1, 2), (2, 3), (3, 100)].into()
    }

    #[test]
    fn evicts_the_layer_needed_furthest_ahead_not_the_next_one() {
        // Computing blk.1; blk.0 (just computed), blk.2 (next) and blk.3 are decoded. Least
        // recently used would pick blk.2 or blk.3 (used in the previous token), the next
        // ones needed; blk.0 is needed only after blk.2, blk.3 and the head.
        let ahead = groups_ahead(Some(1), &cycle());
        let c = cands(&[(2, 1), (3, 2), (0, 9), (1, 10)]);
        let p = Protected {
            current: Some(1),
            ..Protected::default()
        };
        assert_eq!(victim(c.clone(), &ahead, p), Some(2), "blk.0");
        // Without blk.0, blk.3 (two steps ahead) goes before blk.2 (next).
        let c: Vec<Candidate> = c.into_iter().filter(|c| c.group != 0).collect();
        assert_eq!(victim(c.clone(), &ahead, p), Some(1), "blk.3");
        // Left with the current layer only, the sync path still evicts it (it goes last).
        let only_current = cands(&[(1, 10)]);
        assert_eq!(victim(only_current, &ahead, p), Some(0));
    }

    #[test]
    fn the_prefetcher_spares_the_current_and_prefetched_layers() {
        let ahead = groups_ahead(Some(1), &cycle());
        let p = Protected {
            current: Some(1),
            prefetching: Some(2),
            spare: true,
        };
        // blk.3 is the furthest of the unprotected ones.
        assert_eq!(victim(cands(&[(1, 5), (2, 6), (3, 1)]), &ahead, p), Some(2));
        assert_eq!(victim(cands(&[(1, 5), (2, 6)]), &ahead, p), None);
        // The sync path takes protected layers last but takes them.
        let p = Protected { spare: false, ..p };
        assert_eq!(victim(cands(&[(2, 6), (1, 5)]), &ahead, p), Some(0));
    }

    #[test]
    fn unseen_layers_go_first_then_least_recently_used() {
        // No order seen yet (first graph): least recently used.
        let ahead = groups_ahead(Some(0), &HashMap::new());
        let p = Protected::default();
        assert_eq!(victim(cands(&[(1, 7), (2, 3), (3, 5)]), &ahead, p), Some(1));
        // A layer off the known chain counts as needed furthest ahead.
        let ahead = groups_ahead(Some(0), &[(0, 1), (1, 2)].into());
        assert_eq!(victim(cands(&[(2, 0), (7, 9), (1, 1)]), &ahead, p), Some(1));
        // Ties keep the first candidate.
        assert_eq!(victim(cands(&[(5, 4), (6, 4)]), &ahead, p), Some(0));
        assert_eq!(victim(Vec::new(), &ahead, p), None);
    }
}
