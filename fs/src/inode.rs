//! Inode numbers for nodes.
//!
//! A node keeps its number for the life of the mount, so the kernel's cached entries stay
//! valid when a name is listed again. Numbers are never reused; the table grows with the
//! number of distinct names looked up, which is bounded by what users touch (forget
//! messages are not needed to keep it correct).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::namespace::Node;

/// The root directory's inode (FUSE's fixed number).
pub const ROOT: u64 = 1;

/// Two-way map between inode numbers and nodes.
pub struct InodeTable {
    inner: Mutex<Inner>,
}

struct Inner {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        let root = Node::Dir(String::new());
        Self {
            inner: Mutex::new(Inner {
                by_node: HashMap::from([(root.clone(), ROOT)]),
                by_ino: HashMap::from([(ROOT, root)]),
                next: ROOT + 1,
            }),
        }
    }
}

impl InodeTable {
    /// The node's number, assigned on first sight.
    pub fn ino(&self, node: &Node) -> u64 {
        let mut inner = self.inner.lock().expect("inode lock");
        if let Some(&ino) = inner.by_node.get(node) {
            return ino;
        }
        let ino = inner.next;
        inner.next += 1;
        inner.by_node.insert(node.clone(), ino);
        inner.by_ino.insert(ino, node.clone());
        ino
    }

    /// The node behind a number.
    pub fn node(&self, ino: u64) -> Option<Node> {
        self.inner
            .lock()
            .expect("inode lock")
            .by_ino
            .get(&ino)
            .cloned()
    }
}
