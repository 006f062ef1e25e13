//! The index behind `merged.log`: every log line in timestamp order, as a
//! persistent B-tree weighted by line length.
//!
//! Why persistent: each open handle of `merged.log` must keep seeing the
//! order that held when it was opened, while replication keeps inserting
//! lines in the middle. Cloning the root is an O(1) snapshot; an insert
//! copies only the nodes on its path that a snapshot still shares
//! (`Arc::make_mut`), and nothing when no handle is open.
//!
//! Why weighted: `read(offset)` must find the line holding a byte offset in
//! O(log n), so every child records how many bytes lie below it.

use std::sync::Arc;

/// Largest number of entries in a node before it splits.
const NODE_CAPACITY: usize = 64;

/// Where one line sits: its sort key and its bytes in the line file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRef {
    /// Ordered timestamp, then receive position: unique per line.
    pub key: (u64, u64),
    /// Offset of the line in the line file.
    pub pos: u64,
    /// Length of the line, newline included.
    pub len: u32,
}

#[derive(Clone, Debug)]
enum Node {
    Leaf(Vec<LineRef>),
    Branch(Vec<Child>),
}

#[derive(Clone, Debug)]
struct Child {
    first_key: (u64, u64),
    bytes: u64,
    node: Arc<Node>,
}

/// The lines in timestamp order. `Clone` is an O(1) snapshot.
#[derive(Clone, Debug)]
pub struct MergedIndex {
    root: Arc<Node>,
    bytes: u64,
    lines: u64,
}

impl Default for MergedIndex {
    fn default() -> Self {
        MergedIndex {
            root: Arc::new(Node::Leaf(Vec::new())),
            bytes: 0,
            lines: 0,
        }
    }
}

impl MergedIndex {
    /// Total bytes of all lines.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of lines.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The largest key, if any.
    pub fn last_key(&self) -> Option<(u64, u64)> {
        let mut node = &self.root;
        loop {
            match &**node {
                Node::Leaf(lines) => return lines.last().map(|l| l.key),
                Node::Branch(children) => node = &children.last()?.node,
            }
        }
    }

    /// Inserts a line at its key's place.
    pub fn insert(&mut self, line: LineRef) {
        if let Some(sibling) = insert_into(Arc::make_mut(&mut self.root), line) {
            let old = std::mem::replace(&mut self.root, Arc::new(Node::Leaf(Vec::new())));
            let left = child_of(old);
            self.root = Arc::new(Node::Branch(vec![left, sibling]));
        }
        self.bytes += u64::from(line.len);
        self.lines += 1;
    }

    /// The bytes of every line whose key is below `key`: where the first
    /// line at or after `key` starts.
    pub fn offset_of_key(&self, key: (u64, u64)) -> u64 {
        let mut node: &Node = &self.root;
        let mut offset = 0;
        loop {
            match node {
                Node::Leaf(lines) => {
                    return offset
                        + lines
                            .iter()
                            .take_while(|l| l.key < key)
                            .map(|l| u64::from(l.len))
                            .sum::<u64>();
                }
                Node::Branch(children) => {
                    // The last child whose first key is below `key` holds
                    // the boundary; everything before it is below.
                    let at = children.partition_point(|c| c.first_key < key);
                    if at == 0 {
                        return offset;
                    }
                    offset += children[..at - 1].iter().map(|c| c.bytes).sum::<u64>();
                    node = &children[at - 1].node;
                }
            }
        }
    }

    /// Calls `visit(line, skip)` for each line from the one holding byte
    /// `offset` onwards, in order, where `skip` is how many of that line's
    /// bytes lie before `offset` (non-zero for the first line only). Stops
    /// when `visit` returns false.
    pub fn visit_from(&self, offset: u64, mut visit: impl FnMut(&LineRef, u64) -> bool) {
        if offset < self.bytes {
            visit_node(&self.root, offset, &mut visit);
        }
    }
}

fn child_of(node: Arc<Node>) -> Child {
    let (first_key, bytes) = summary(&node);
    Child {
        first_key,
        bytes,
        node,
    }
}

fn summary(node: &Node) -> ((u64, u64), u64) {
    match node {
        Node::Leaf(lines) => (
            lines.first().map_or((0, 0), |l| l.key),
            lines.iter().map(|l| u64::from(l.len)).sum(),
        ),
        Node::Branch(children) => (
            children.first().map_or((0, 0), |c| c.first_key),
            children.iter().map(|c| c.bytes).sum(),
        ),
    }
}

/// Inserts into `node`; returns a new right sibling when `node` split.
fn insert_into(node: &mut Node, line: LineRef) -> Option<Child> {
    match node {
        Node::Leaf(lines) => {
            let at = lines.partition_point(|l| l.key < line.key);
            let right = insert_splitting(lines, at, line)?;
            Some(child_of(Arc::new(Node::Leaf(right))))
        }
        Node::Branch(children) => {
            let at = children
                .partition_point(|c| c.first_key <= line.key)
                .saturating_sub(1);
            let child = &mut children[at];
            child.bytes += u64::from(line.len);
            if line.key < child.first_key {
                child.first_key = line.key;
            }
            let split = insert_into(Arc::make_mut(&mut child.node), line);
            let sibling = split?;
            child.bytes -= sibling.bytes;
            let right = insert_splitting(children, at + 1, sibling)?;
            Some(child_of(Arc::new(Node::Branch(right))))
        }
    }
}

/// Inserts `item` at `at` in a node's entries; when the node is full, splits
/// it and returns the entries of its new right sibling.
///
/// Lines mostly arrive in timestamp order, at the end of the last node. An
/// insert at the end therefore leaves the full node whole and starts an
/// empty sibling, so that nodes filled by appends stay full; other inserts
/// split in the middle. Nodes are allocated at their capacity once and never
/// regrow, so a node costs no more memory than its entries.
fn insert_splitting<T>(entries: &mut Vec<T>, at: usize, item: T) -> Option<Vec<T>> {
    if entries.len() < NODE_CAPACITY {
        if entries.capacity() < NODE_CAPACITY {
            entries.reserve_exact(NODE_CAPACITY - entries.len());
        }
        entries.insert(at, item);
        return None;
    }
    let mid = if at == entries.len() {
        at
    } else {
        entries.len() / 2
    };
    let mut right = Vec::with_capacity(NODE_CAPACITY);
    right.extend(entries.drain(mid..));
    if at < mid {
        entries.insert(at, item);
    } else {
        right.insert(at - mid, item);
    }
    Some(right)
}

/// Returns false when the visitor asked to stop.
fn visit_node(node: &Node, mut offset: u64, visit: &mut impl FnMut(&LineRef, u64) -> bool) -> bool {
    match node {
        Node::Leaf(lines) => {
            for line in lines {
                let len = u64::from(line.len);
                if offset >= len {
                    offset -= len;
                    continue;
                }
                if !visit(line, offset) {
                    return false;
                }
                offset = 0;
            }
            true
        }
        Node::Branch(children) => {
            for child in children {
                if offset >= child.bytes {
                    offset -= child.bytes;
                    continue;
                }
                if !visit_node(&child.node, offset, visit) {
                    return false;
                }
                offset = 0;
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: u64, recv: u64, len: u32) -> LineRef {
        LineRef {
            key: (ts, recv),
            pos: recv * 1000,
            len,
        }
    }

    fn collect(index: &MergedIndex, offset: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        index.visit_from(offset, |l, skip| {
            out.push((l.key.1, skip));
            true
        });
        out
    }

    #[test]
    fn lines_come_out_in_key_order_whatever_the_insert_order() {
        let mut index = MergedIndex::default();
        // A pseudo-random insertion order over 5000 keys.
        let n = 5000u64;
        for i in 0..n {
            let ts = (i * 7919) % n;
            index.insert(line(ts, i, 10));
        }
        let mut seen = Vec::new();
        index.visit_from(0, |l, _| {
            seen.push(l.key.0);
            true
        });
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        assert_eq!(index.bytes(), n * 10);
    }

    #[test]
    fn offsets_find_the_line_that_holds_them() {
        let mut index = MergedIndex::default();
        for i in 0..1000u64 {
            index.insert(line(i, i, (i % 13 + 1) as u32));
        }
        let mut start = 0u64;
        for i in 0..1000u64 {
            let len = i % 13 + 1;
            assert_eq!(collect(&index, start)[0], (i, 0));
            assert_eq!(collect(&index, start + len - 1)[0], (i, len - 1));
            start += len;
        }
        assert!(collect(&index, start).is_empty());
    }

    fn leaves(node: &Node) -> usize {
        match node {
            Node::Leaf(_) => 1,
            Node::Branch(children) => children.iter().map(|c| leaves(&c.node)).sum(),
        }
    }

    #[test]
    fn lines_appended_in_order_fill_their_nodes() {
        let mut index = MergedIndex::default();
        let n = NODE_CAPACITY as u64 * 100;
        for i in 0..n {
            index.insert(line(i, i, 3));
        }
        assert_eq!(leaves(&index.root), 100);
        assert_eq!(collect(&index, 0).len() as u64, n);
        // A line in the middle still lands in order.
        index.insert(line(5, n, 3));
        let order: Vec<u64> = collect(&index, 0).iter().map(|(recv, _)| *recv).collect();
        assert_eq!(&order[..7], &[0, 1, 2, 3, 4, 5, n]);
    }

    #[test]
    fn offsets_of_keys_count_the_bytes_below() {
        let mut index = MergedIndex::default();
        // Enough lines for branches, inserted out of order.
        for i in (0..500u64).rev() {
            index.insert(line(i * 10, 0, (i % 7 + 1) as u32));
        }
        let below =
            |ts: u64| -> u64 { (0..500u64).filter(|i| i * 10 < ts).map(|i| i % 7 + 1).sum() };
        for ts in [0, 5, 10, 11, 1234, 2500, 4990, 4991, 9999] {
            assert_eq!(index.offset_of_key((ts, 0)), below(ts), "ts {ts}");
        }
    }

    #[test]
    fn a_snapshot_does_not_see_later_inserts() {
        let mut index = MergedIndex::default();
        for i in 0..500u64 {
            index.insert(line(i * 2, i, 5));
        }
        let snapshot = index.clone();
        for i in 0..500u64 {
            index.insert(line(i * 2 + 1, 500 + i, 5));
        }
        assert_eq!(snapshot.lines(), 500);
        assert_eq!(collect(&snapshot, 0).len(), 500);
        assert!(collect(&snapshot, 0).iter().all(|(recv, _)| *recv < 500));
        assert_eq!(collect(&index, 0).len(), 1000);
    }
}
