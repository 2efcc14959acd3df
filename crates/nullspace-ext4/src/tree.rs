//! The in-memory tree of nodes: names, links, removal. It holds metadata and block lists,
//! never file data.

use std::collections::BTreeMap;

use crate::data::FileData;
use crate::layout::{LINK_MAX, NAME_MAX};
use crate::meta::Metadata;
use crate::Error;

/// Handle to a node of a [`crate::Writer`]'s tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) u32);

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// Kind-specific contents of a node.
#[derive(Debug)]
pub(crate) enum Body {
    /// Children by name.
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    /// A regular file's blocks.
    File(FileData),
    /// A symlink's target; slow symlinks also own a data block.
    Symlink(Box<[u8]>, Option<FileData>),
}

/// One inode-to-be.
#[derive(Debug)]
pub(crate) struct Node {
    /// Owner, mode, times, xattrs.
    pub meta: Metadata,
    /// Contents.
    pub body: Body,
    /// Directory entries naming this node (for directories: 1 while attached).
    pub links: u32,
    /// Directory the node was first created in (a directory's only parent).
    pub parent: NodeId,
    /// Name it was first created under (for messages and `..`).
    pub name: Box<[u8]>,
}

impl Node {
    pub(crate) fn kind(&self) -> NodeKind {
        match self.body {
            Body::Dir(_) => NodeKind::Directory,
            Body::File(_) => NodeKind::File,
            Body::Symlink(..) => NodeKind::Symlink,
        }
    }

    pub(crate) fn alive(&self) -> bool {
        self.links > 0
    }
}

/// All nodes ever created; removed ones stay as tombstones so handles remain valid.
#[derive(Debug)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    /// Names in the tree (hard links count once each).
    pub entries: u64,
}

/// The root directory's handle.
pub(crate) const ROOT: NodeId = NodeId(0);

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Tree {
    /// A tree holding only the root directory.
    pub(crate) fn new(root_meta: Metadata) -> Tree {
        Tree {
            nodes: vec![Node {
                meta: root_meta,
                body: Body::Dir(BTreeMap::new()),
                links: 1,
                parent: ROOT,
                name: Box::default(),
            }],
            entries: 0,
        }
    }

    pub(crate) fn node(&self, id: NodeId) -> Result<&Node, Error> {
        self.nodes
            .get(id.0 as usize)
            .ok_or(Error::UnknownNode(id.0))
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, Error> {
        self.nodes
            .get_mut(id.0 as usize)
            .ok_or(Error::UnknownNode(id.0))
    }

    /// Absolute path of a node by the names it was created under.
    pub(crate) fn path(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != ROOT && parts.len() < 4096 {
            match self.nodes.get(cur.0 as usize) {
                Some(n) => {
                    parts.push(lossy(&n.name));
                    cur = n.parent;
                }
                None => break,
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Path of `name` inside `dir`.
    pub(crate) fn child_path(&self, dir: NodeId, name: &[u8]) -> String {
        let p = self.path(dir);
        if p == "/" {
            format!("/{}", lossy(name))
        } else {
            format!("{p}/{}", lossy(name))
        }
    }

    pub(crate) fn children(&self, dir: NodeId) -> Option<&BTreeMap<Box<[u8]>, NodeId>> {
        match self.nodes.get(dir.0 as usize).map(|n| &n.body) {
            Some(Body::Dir(c)) => Some(c),
            _ => None,
        }
    }

    /// Checks that `dir` is a live directory and `name` a valid, free name in it.
    fn check_new_name(&self, dir: NodeId, name: &[u8]) -> Result<(), Error> {
        let node = self.node(dir)?;
        if !node.alive() {
            return Err(Error::Removed { what: "parent" });
        }
        let Body::Dir(children) = &node.body else {
            return Err(Error::NotADirectory {
                path: self.path(dir),
            });
        };
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > NAME_MAX {
            Some("over 255 bytes")
        } else if name.contains(&b'/') {
            Some("contains '/'")
        } else if name.contains(&0) {
            Some("contains NUL")
        } else if name == b"." || name == b".." {
            Some("'.' and '..' are reserved")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidName {
                dir: self.path(dir),
                name: lossy(name),
                reason,
            });
        }
        if children.contains_key(name) {
            return Err(Error::AlreadyExists {
                path: self.child_path(dir, name),
            });
        }
        Ok(())
    }

    /// Adds a new node named `name` in `dir`.
    pub(crate) fn insert(
        &mut self,
        dir: NodeId,
        name: &[u8],
        meta: Metadata,
        body: Body,
    ) -> Result<NodeId, Error> {
        self.check_new_name(dir, name)?;
        let id = NodeId(
            u32::try_from(self.nodes.len()).map_err(|_| Error::TooManyInodes {
                count: self.nodes.len() as u64,
                limit: u64::from(u32::MAX),
            })?,
        );
        self.nodes.push(Node {
            meta,
            body,
            links: 1,
            parent: dir,
            name: name.into(),
        });
        self.attach(dir, name, id);
        Ok(id)
    }

    fn attach(&mut self, dir: NodeId, name: &[u8], id: NodeId) {
        if let Some(Node {
            body: Body::Dir(children),
            ..
        }) = self.nodes.get_mut(dir.0 as usize)
        {
            children.insert(name.into(), id);
            self.entries += 1;
        }
    }

    /// Adds another name for a file or symlink.
    pub(crate) fn link(&mut self, dir: NodeId, name: &[u8], existing: NodeId) -> Result<(), Error> {
        self.check_new_name(dir, name)?;
        let target = self.node(existing)?;
        if !target.alive() {
            return Err(Error::Removed {
                what: "link target",
            });
        }
        if target.kind() == NodeKind::Directory {
            return Err(Error::LinkToDirectory {
                path: self.path(existing),
            });
        }
        if target.links >= LINK_MAX {
            return Err(Error::TooManyLinks {
                path: self.child_path(dir, name),
                limit: LINK_MAX,
            });
        }
        self.node_mut(existing)?.links += 1;
        self.attach(dir, name, existing);
        Ok(())
    }

    /// Unlinks `name` from `dir` (directories recursively) and returns the data of every node
    /// whose last link went.
    pub(crate) fn remove(&mut self, dir: NodeId, name: &[u8]) -> Result<Vec<FileData>, Error> {
        let path = self.child_path(dir, name);
        let node = self.node_mut(dir)?;
        let Body::Dir(children) = &mut node.body else {
            return Err(Error::NotADirectory {
                path: self.path(dir),
            });
        };
        let child = children.remove(name).ok_or(Error::NotFound { path })?;
        self.entries -= 1;
        let mut freed = Vec::new();
        let mut stack = vec![child];
        while let Some(id) = stack.pop() {
            let Some(node) = self.nodes.get_mut(id.0 as usize) else {
                continue;
            };
            node.links = node.links.saturating_sub(1);
            if node.links > 0 {
                continue;
            }
            match &mut node.body {
                Body::Dir(children) => {
                    let children = std::mem::take(children);
                    self.entries -= children.len() as u64;
                    stack.extend(children.into_values());
                }
                Body::File(data) => freed.push(std::mem::take(data)),
                Body::Symlink(_, data) => freed.extend(data.take()),
            }
        }
        Ok(freed)
    }
}
