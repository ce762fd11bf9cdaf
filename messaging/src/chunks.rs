//! Statements of many rows, cut into pieces that each travel in one write.
//!
//! sqlx 0.9.0 leaves Nagle's algorithm on for its TCP sockets (upstream issue 4335). A
//! statement larger than one TLS record (16 KiB) goes out in two writes, and the second
//! waits until the server acknowledges the first: up to the 40 ms of a delayed ACK, for
//! every such statement. A batch's inbox claims and outbox rows are therefore written in
//! pieces of at most [`STATEMENT_BYTES`], which each leave in a single write; the extra
//! round trips cost far less than one stall.

use std::ops::Range;

/// The most bytes of row data one statement carries.
pub const STATEMENT_BYTES: usize = 12 * 1024;

/// Keys per `ANY($1)` or `UNNEST($1)` of UUIDs: 16 bytes each, well inside one write.
pub const UUIDS_PER_STATEMENT: usize = 500;

/// Cuts rows of the given sizes into consecutive ranges of at most `budget` bytes each (a
/// row larger than the budget gets a range of its own).
pub fn by_size(sizes: impl IntoIterator<Item = usize>, budget: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0, 0);
    for size in sizes {
        if end > start && bytes + size > budget {
            ranges.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes += size;
        end += 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_at_the_budget_and_none_is_lost() {
        assert_eq!(by_size([5, 5, 5, 5, 5], 10), vec![0..2, 2..4, 4..5]);
        assert_eq!(by_size([20, 1, 1], 10), vec![0..1, 1..3]);
        assert_eq!(by_size([1, 20, 1], 10), vec![0..1, 1..2, 2..3]);
        assert!(by_size([], 10).is_empty());
        let sizes: Vec<usize> = (0..1000).map(|i| 50 + i % 700).collect();
        let ranges = by_size(sizes.iter().copied(), STATEMENT_BYTES);
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(1000));
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for r in ranges {
            assert!(sizes[r].iter().sum::<usize>() <= STATEMENT_BYTES);
        }
    }
}
