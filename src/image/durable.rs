//! Durability of what a pull wrote, and of nothing else.
//!
//! Layer files are written without waiting for the disk. Before a layer is published,
//! [`publish`] fsyncs every regular file of the unpacked tree and every directory (their entries:
//! the files, and the symlinks, device nodes, whiteouts and fifos that cannot be opened for an
//! fsync of their own), the tree's root last, renames the tree into place and fsyncs the
//! directory it now sits in; only then does the caller write the layer's record.
//!
//! No `syncfs`: flushing the whole filesystem would make a pull pay for every other writer's
//! dirty data (container logs, other pulls, builds on the node). No `sync_file_range` as each
//! file is written either: measured on ext4 (2 000 files of 4 KiB, 300 of 256 KiB), starting
//! every file's writeback early slowed the unpack by more than it saved at the fsyncs.
//!
//! Blocking. Must not follow symlinks or leave the tree it is given.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// What [`sync_tree`] flushed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub files: u64,
    pub dirs: u64,
}

/// Threads fsyncing one batch: one fsync at a time pays a disk cache flush per file (measured:
/// ~1.5 ms each, 3 s for 2 000 small files); concurrent ones share the flushes.
const SYNC_THREADS: usize = 8;
/// Paths queued before they are fsynced: bounds memory on layers of millions of files.
const SYNC_BATCH: usize = 1024;

/// Fsyncs every regular file below `root` and every directory, a directory after its
/// subdirectories, `root` last; in batches of up to [`SYNC_BATCH`] paths, each spread over
/// [`SYNC_THREADS`] threads, all done when it returns. Symlinks are never followed. Memory: one
/// batch and the names of the directories still to visit.
pub fn sync_tree(root: &Path) -> io::Result<Synced> {
    enum Visit {
        Enter(PathBuf),
        Leave(PathBuf),
    }
    let mut synced = Synced::default();
    let mut batch: Vec<(PathBuf, OFlags)> = Vec::new();
    let mut stack = vec![Visit::Enter(root.to_path_buf())];
    while let Some(visit) = stack.pop() {
        match visit {
            Visit::Enter(dir) => {
                let mut subdirs = Vec::new();
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    // d_type, from the directory itself: no stat, and a symlink is a symlink.
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        subdirs.push(entry.path());
                    } else if kind.is_file() {
                        batch.push((entry.path(), OFlags::empty()));
                        synced.files += 1;
                        if batch.len() >= SYNC_BATCH {
                            sync_batch(&mut batch)?;
                        }
                    }
                }
                stack.push(Visit::Leave(dir));
                stack.extend(subdirs.into_iter().map(Visit::Enter));
            }
            Visit::Leave(dir) => {
                batch.push((dir, OFlags::DIRECTORY));
                synced.dirs += 1;
                if batch.len() >= SYNC_BATCH {
                    sync_batch(&mut batch)?;
                }
            }
        }
    }
    // `root` came last: fsync it after everything below it is durable.
    let last = batch.pop();
    sync_batch(&mut batch)?;
    if let Some((path, flags)) = last {
        sync_path(&path, flags)?;
    }
    Ok(synced)
}

/// Fsyncs the batch on up to [`SYNC_THREADS`] threads (inline for one path) and empties it.
fn sync_batch(batch: &mut Vec<(PathBuf, OFlags)>) -> io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    // Even a few fsyncs are worth threads: a thread costs tens of microseconds, a flush about a
    // millisecond.
    let threads = SYNC_THREADS.min(batch.len());
    if threads <= 1 {
        for (path, flags) in batch.drain(..) {
            sync_path(&path, flags)?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<io::Error>> = Mutex::new(None);
    let items = &batch[..];
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, flags)) = items.get(i) else {
                    return;
                };
                if let Err(e) = sync_path(path, *flags) {
                    // Stop everyone: the layer will not be published anyway.
                    next.store(items.len(), Ordering::Relaxed);
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(io::Error::new(
                            e.kind(),
                            format!("{}: {e}", path.display()),
                        ));
                    }
                    return;
                }
            });
        }
    });
    batch.clear();
    match failed.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Makes the tree `tmp` durable ([`sync_tree`]), renames it to `dest` and fsyncs `dest`'s
/// parent: when this returns, `dest` survives a power loss complete.
pub fn publish(tmp: &Path, dest: &Path) -> io::Result<Synced> {
    let synced = sync_tree(tmp)?;
    std::fs::rename(tmp, dest)?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(synced)
}

/// Fsyncs a directory (its entries).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    sync_path(dir, OFlags::DIRECTORY)
}

fn sync_path(path: &Path, extra: OFlags) -> io::Result<()> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )?;
    File::from(fd).sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_tree_flushes_every_file_and_dir_of_the_tree_and_follows_no_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("x/y")).unwrap();
        std::fs::write(outside.path().join("x/y/f"), b"not ours").unwrap();
        let tree = root.path().join("layer");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::create_dir_all(tree.join("d")).unwrap();
        for f in ["top", "a/one", "a/b/two", "a/b/c/three"] {
            std::fs::write(tree.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink(outside.path().join("x"), tree.join("d/link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", tree.join("dangling")).unwrap();
        std::fs::hard_link(tree.join("top"), tree.join("d/hard")).unwrap();
        let synced = sync_tree(&tree).unwrap();
        // 4 files + the hard link's second name; root, a, a/b, a/b/c, d. Nothing below the
        // symlinked `x`.
        assert_eq!(synced, Synced { files: 5, dirs: 5 });
    }

    #[test]
    fn sync_tree_of_more_than_a_batch_uses_threads_and_counts_everything() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("layer");
        for d in 0..30 {
            let dir = tree.join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..50 {
                std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
            }
        }
        assert_eq!(
            sync_tree(&tree).unwrap(),
            Synced {
                files: 1500,
                dirs: 31
            }
        );
    }

    #[test]
    fn sync_tree_of_a_missing_tree_fails() {
        let root = tempfile::tempdir().unwrap();
        assert!(sync_tree(&root.path().join("missing")).is_err());
    }

    #[test]
    fn publish_renames_the_tree_into_place() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp-layer");
        std::fs::create_dir_all(tmp.join("etc")).unwrap();
        std::fs::write(tmp.join("etc/hostname"), b"x").unwrap();
        let dest = root.path().join("layers/abc");
        std::fs::create_dir_all(root.path().join("layers")).unwrap();
        let synced = publish(&tmp, &dest).unwrap();
        assert_eq!(synced, Synced { files: 1, dirs: 2 });
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(dest.join("etc/hostname")).unwrap(), b"x");
    }

    /// Issue 15: a pull flushes what it wrote, never the whole filesystem.
    #[test]
    fn no_syncfs_on_the_pull_path() {
        let sources = [
            ("pull.rs", include_str!("pull.rs")),
            ("store.rs", include_str!("store.rs")),
            ("unpack.rs", include_str!("unpack.rs")),
            ("unpack/write.rs", include_str!("unpack/write.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ];
        for (name, source) in sources {
            for banned in ["syncfs(", "sync_fs(", "libc::sync("] {
                assert!(!source.contains(banned), "{name} calls {banned}");
            }
        }
    }
}
