//! The one arena planner: buffers with sizes and lifetimes placed at offsets of one region so
//! that buffers live at the same time never overlap.
//!
//! **Greedy by size, best fit** (as TFLite's arena planner: Pisarchyk and Lee, "Efficient
//! Memory Management for Deep Neural Net Inference", 2020). Slots are taken largest first
//! (ties by first use, then index); each goes into the smallest gap between already placed
//! slots whose lifetimes overlap its own, or above the highest of them. Largest-first places
//! the few huge buffers before the small ones fill the holes between them.

use super::align;

/// A span of time over which a buffer is live: steps `start..=end` of one timeline.
/// Buffers on different timelines never conflict (two op lists that never run at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub timeline: usize,
    pub start: usize,
    pub end: usize,
}

impl Span {
    fn overlaps(&self, other: &Span) -> bool {
        self.timeline == other.timeline && self.start <= other.end && other.start <= self.end
    }
}

/// One buffer to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Its size; it occupies `bytes` rounded up to the alignment.
    pub bytes: u64,
    /// When it is live (usually one span).
    pub spans: Vec<Span>,
    /// Its first use, to order slots of equal size.
    pub first: usize,
}

/// Whether two slots are live at the same time.
pub fn conflict(a: &[Span], b: &[Span]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
}

/// The offset of every slot (aligned) and the region's size: the end of the highest slot.
pub fn plan(slots: &[Slot]) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(align(slots[i].bytes)), slots[i].first, i));
    let mut offsets = vec![0u64; slots.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(order.len());
    for &i in &order {
        let size = align(slots[i].bytes);
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&o| conflict(&slots[i].spans, &slots[o].spans))
            .map(|&o| (offsets[o], offsets[o] + align(slots[o].bytes)))
            .collect();
        busy.sort_unstable();
        let (mut top, mut best) = (0u64, None::<(u64, u64)>);
        for (lo, hi) in busy {
            if lo >= top + size && best.map_or(true, |(gap, _)| lo - top < gap) {
                best = Some((lo - top, top));
            }
            top = top.max(hi);
        }
        offsets[i] = best.map_or(top, |(_, offset)| offset);
        placed.push(i);
    }
    let total = (0..slots.len())
        .map(|i| offsets[i] + align(slots[i].bytes))
        .max()
        .unwrap_or(0);
    (offsets, total)
}

/// Largest sum of aligned slots live at one step of `timeline`: no placement can use less.
pub fn live_bound(slots: &[Slot], timeline: usize) -> u64 {
    let len = slots
        .iter()
        .flat_map(|s| &s.spans)
        .filter(|s| s.timeline == timeline)
        .map(|s| s.end + 1)
        .max()
        .unwrap_or(0);
    let mut delta = vec![0i128; len + 1];
    for s in slots {
        for sp in s.spans.iter().filter(|sp| sp.timeline == timeline) {
            let size = align(s.bytes) as i128;
            delta[sp.start] += size;
            delta[sp.end + 1] -= size;
        }
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(bytes: u64, start: usize, end: usize) -> Slot {
        Slot {
            bytes,
            spans: vec![Span {
                timeline: 0,
                start,
                end,
            }],
            first: start,
        }
    }

    #[test]
    fn disjoint_lifetimes_share_memory_and_overlapping_ones_do_not() {
        // a [0,1] and b [2,3] can share; c [1,2] overlaps both.
        let slots = [slot(1000, 0, 1), slot(1000, 2, 3), slot(300, 1, 2)];
        let (off, total) = plan(&slots);
        assert_eq!(off[0], off[1]);
        assert!(off[2] >= off[0] + 1024 || off[2] + 512 <= off[0]);
        assert_eq!(total, 1024 + 512);
        assert_eq!(live_bound(&slots, 0), total);
    }

    #[test]
    fn other_timelines_never_conflict() {
        let mut b = slot(4096, 0, 9);
        b.spans[0].timeline = 1;
        let (off, total) = plan(&[slot(4096, 0, 9), b]);
        assert_eq!(off, vec![0, 0]);
        assert_eq!(total, 4096);
    }

    #[test]
    fn a_short_lived_slot_reuses_a_dead_ones_memory() {
        // Two long-lived slots with a short-lived hole between them: the hole is reused.
        let slots = [
            slot(2048, 0, 5),
            slot(512, 0, 1),
            slot(2048, 0, 5),
            slot(256, 3, 4),
        ];
        let (off, _) = plan(&slots);
        assert_eq!(off[3], off[1], "the freed 512-byte hole is the best fit");
    }
}
