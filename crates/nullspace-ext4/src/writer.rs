//! The public [`Writer`]: builds the tree and streams data; [`Writer::finish`] (in
//! `finish.rs`) writes the metadata.

use std::fs::File;
use std::io::Read;

use crate::alloc::Allocator;
use crate::data::{self, FileData, CHUNK};
use crate::image::Image;
use crate::layout::{FAST_SYMLINK_MAX, SYMLINK_MAX};
use crate::meta::Metadata;
use crate::tree::{Body, NodeId, NodeKind, Tree, ROOT};
use crate::{xattr, Error, Options};

/// Builds one ext4 image. See the [crate documentation](crate) for the overall flow.
#[derive(Debug)]
pub struct Writer {
    pub(crate) image: Image,
    pub(crate) alloc: Allocator,
    pub(crate) tree: Tree,
    pub(crate) options: Options,
    buf: Vec<u8>,
    /// First error from [`Writer::release`], reported by `finish`.
    pub(crate) deferred: Option<Error>,
}

impl Writer {
    /// Starts an image in `file`, which is truncated and owned from here on. The root starts as
    /// `0755 root:root` with a `lost+found` directory (`0700`); change either with
    /// [`Writer::set_metadata`].
    pub fn create(file: File, options: Options) -> Result<Writer, Error> {
        let image = Image::new(file)?;
        let mut tree = Tree::new(Metadata::with_mode(0o755));
        tree.insert(
            ROOT,
            b"lost+found",
            Metadata::with_mode(0o700),
            Body::Dir(Default::default()),
        )?;
        Ok(Writer {
            image,
            alloc: Allocator::new(),
            tree,
            options,
            buf: vec![0u8; CHUNK],
            deferred: None,
        })
    }

    /// The root directory.
    pub fn root(&self) -> NodeId {
        ROOT
    }

    fn check_xattrs(&self, path: impl FnOnce() -> String, meta: &Metadata) -> Result<(), Error> {
        match xattr::place(&meta.xattrs) {
            Ok(_) => Ok(()),
            Err(xattr::Problem::Invalid { name, reason }) => Err(Error::InvalidXattr {
                path: path(),
                name,
                reason,
            }),
            Err(xattr::Problem::TooBig { needed, limit }) => Err(Error::XattrTooBig {
                path: path(),
                needed,
                limit,
            }),
        }
    }

    /// Replaces a node's metadata (also the root's).
    pub fn set_metadata(&mut self, node: NodeId, meta: Metadata) -> Result<(), Error> {
        self.tree.node(node)?;
        self.check_xattrs(|| self.tree.path(node), &meta)?;
        self.tree.node_mut(node)?.meta = meta;
        Ok(())
    }

    /// A node's metadata.
    ///
    /// # Panics
    ///
    /// If `node` did not come from this writer.
    pub fn metadata(&self, node: NodeId) -> &Metadata {
        &self.tree.nodes[node.0 as usize].meta
    }

    /// What a node is.
    ///
    /// # Panics
    ///
    /// If `node` did not come from this writer.
    pub fn kind(&self, node: NodeId) -> NodeKind {
        self.tree.nodes[node.0 as usize].kind()
    }

    /// The node named `name` in directory `dir`, if any (`.` and `..` are not entries).
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.tree.children(dir)?.get(name).copied()
    }

    /// The entries of `dir` sorted by name (empty if `dir` is not a directory).
    pub fn entries(&self, dir: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        self.tree
            .children(dir)
            .into_iter()
            .flat_map(|c| c.iter().map(|(k, v)| (&**k, *v)))
    }

    /// A symlink's target (`None` for other kinds).
    pub fn symlink_target(&self, node: NodeId) -> Option<&[u8]> {
        match &self.tree.nodes.get(node.0 as usize)?.body {
            Body::Symlink(target, _) => Some(target),
            _ => None,
        }
    }

    /// A regular file's size (`None` for other kinds).
    pub fn file_size(&self, node: NodeId) -> Option<u64> {
        match &self.tree.nodes.get(node.0 as usize)?.body {
            Body::File(data) => Some(data.size),
            _ => None,
        }
    }

    /// Streams exactly `size` bytes from `reader` into the image and returns where they went.
    /// Fails (and gives the blocks back) if the reader ends early or errors.
    pub fn write_data(&mut self, reader: &mut dyn Read, size: u64) -> Result<FileData, Error> {
        let mut data = FileData {
            size,
            ..FileData::default()
        };
        match data::stream(
            reader,
            &mut data,
            &mut self.alloc,
            &self.image,
            &mut self.buf,
        ) {
            Ok(()) => Ok(data),
            Err(e) => {
                self.release(data);
                Err(e)
            }
        }
    }

    /// Creates directory `name` in `parent`.
    pub fn create_dir(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: Metadata,
    ) -> Result<NodeId, Error> {
        self.check_xattrs(|| self.tree.child_path(parent, name), &meta)?;
        self.tree
            .insert(parent, name, meta, Body::Dir(Default::default()))
    }

    /// Creates regular file `name` in `parent` holding `data`. On error the data stays
    /// unattached: its blocks are released.
    pub fn create_file(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: Metadata,
        data: FileData,
    ) -> Result<NodeId, Error> {
        if let Err(e) = self.check_xattrs(|| self.tree.child_path(parent, name), &meta) {
            self.release(data);
            return Err(e);
        }
        // Validate the name before taking ownership of the data into the tree.
        match self
            .tree
            .insert(parent, name, meta, Body::File(FileData::default()))
        {
            Ok(id) => {
                if let Some(node) = self.tree.nodes.get_mut(id.0 as usize) {
                    node.body = Body::File(data);
                }
                Ok(id)
            }
            Err(e) => {
                self.release(data);
                Err(e)
            }
        }
    }

    /// Creates symlink `name` in `parent` pointing at `target` (1..=4095 bytes, no NUL).
    pub fn create_symlink(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: Metadata,
        target: &[u8],
    ) -> Result<NodeId, Error> {
        let reason = if target.is_empty() {
            Some("empty".to_string())
        } else if target.len() > SYMLINK_MAX {
            Some(format!("{} bytes, over {SYMLINK_MAX}", target.len()))
        } else if target.contains(&0) {
            Some("contains NUL".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidSymlinkTarget {
                path: self.tree.child_path(parent, name),
                reason,
            });
        }
        self.check_xattrs(|| self.tree.child_path(parent, name), &meta)?;
        let data = if target.len() > FAST_SYMLINK_MAX {
            let mut reader = target;
            Some(self.write_data(&mut reader, target.len() as u64)?)
        } else {
            None
        };
        match self
            .tree
            .insert(parent, name, meta, Body::Symlink(target.into(), None))
        {
            Ok(id) => {
                if let Some(node) = self.tree.nodes.get_mut(id.0 as usize) {
                    node.body = Body::Symlink(target.into(), data);
                }
                Ok(id)
            }
            Err(e) => {
                if let Some(data) = data {
                    self.release(data);
                }
                Err(e)
            }
        }
    }

    /// Adds the name `name` in `parent` for an existing file or symlink (a hard link).
    pub fn link(&mut self, parent: NodeId, name: &[u8], existing: NodeId) -> Result<(), Error> {
        self.tree.link(parent, name, existing)
    }

    /// Removes `name` from `parent`; directories go with their whole subtree. Data whose last
    /// link goes is released.
    pub fn remove(&mut self, parent: NodeId, name: &[u8]) -> Result<(), Error> {
        for data in self.tree.remove(parent, name)? {
            self.release(data);
        }
        Ok(())
    }

    /// Gives back the blocks of data that was never attached to a node: they become free in
    /// the image and are punched out of the file.
    pub fn release(&mut self, data: FileData) {
        for run in data.runs() {
            if let Err(e) = self.image.punch(run.start, run.len) {
                self.deferred.get_or_insert(e);
            }
        }
    }

    /// Number of names in the tree (each hard link counts; the root does not, `lost+found`
    /// does).
    pub fn entry_count(&self) -> u64 {
        self.tree.entries
    }
}
