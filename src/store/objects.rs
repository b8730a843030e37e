//! Content-addressed objects: files stored by the SHA-256 of their content
//! under `objects/ab/cdef...`, so identical content is stored once.
//!
//! Writing streams through a fixed buffer into a temporary file in the same
//! folder, hashing on the way, then fsyncs and renames: a crash leaves no
//! half-written object under a real name, and two writers of the same
//! content cannot corrupt it (both renames carry identical bytes). Reading
//! verifies the hash while copying and only renames the result into place
//! when it matches, so a corrupted object never lands as a restored file.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest as _, Sha256};

use super::{IoFailure, io_err};

/// Copy buffer: memory use does not grow with file size.
const BUF: usize = 256 * 1024;

/// A SHA-256 digest, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn parse(hex: &str) -> Option<Digest> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a SHA-256 digest")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Io(#[from] IoFailure),
    #[error("object {0} is missing from the store")]
    Missing(Digest),
    #[error("object {digest} is corrupted: its content hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("stopped: the attempt was cancelled")]
    Cancelled,
    #[error(
        "the store's file system {path} has {} MiB free; trackside keeps {} MiB free (artifacts.min_free in config.yml)",
        free >> 20,
        margin >> 20
    )]
    DiskFull { path: PathBuf, free: u64, margin: u64 },
}

/// Limits on what a set of writes may do: keep a margin of free space on
/// the store's file system, and stop at once when cancelled. Checked as the
/// bytes go, not after.
#[derive(Debug, Clone, Default)]
pub struct WriteLimits {
    /// Bytes that must stay free on the file system of the store.
    pub min_free: u64,
    /// Set from outside (the attempt was cancelled): the write stops at its
    /// next buffer and its temp file is removed.
    pub cancel: Arc<AtomicBool>,
}

/// How often a long write checks the free space again.
const FREE_CHECK_EVERY: u64 = 64 << 20;

impl WriteLimits {
    fn check(&self, dir: &Path, about_to_write: u64) -> Result<(), ObjectError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ObjectError::Cancelled);
        }
        if self.min_free == 0 {
            return Ok(());
        }
        let free = free_bytes(dir).map_err(io_err("cannot check the free space of", dir))?;
        if free < self.min_free.saturating_add(about_to_write) {
            return Err(ObjectError::DiskFull {
                path: dir.to_path_buf(),
                free,
                margin: self.min_free,
            });
        }
        Ok(())
    }
}

/// A failed write as the store's error: a full file system (filled before
/// the next free-space check saw it) is [`ObjectError::DiskFull`], with
/// what is free now.
fn write_failed(e: io::Error, dir: &Path, tmp: &Path, limits: &WriteLimits) -> ObjectError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return ObjectError::DiskFull {
            path: dir.to_path_buf(),
            free: free_bytes(dir).unwrap_or(0),
            margin: limits.min_free,
        };
    }
    io_err("cannot write", tmp)(e).into()
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Whether a buffer holds only zeros: such runs become holes, not bytes.
fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

pub struct ObjectStore {
    root: PathBuf,
}

/// See [`ObjectStore::batch`]. Dropping it without `commit` discards its temp files.
pub struct Batch<'a> {
    store: &'a ObjectStore,
    pending: Vec<(PathBuf, Digest)>,
    limits: WriteLimits,
}

impl Batch<'_> {
    pub fn put_file(&mut self, path: &Path) -> Result<(Digest, u64), ObjectError> {
        let f = File::open(path).map_err(io_err("cannot open", path))?;
        let (tmp, digest, size) = self.store.write_temp(f, false, &self.limits)?;
        if self.store.contains(&digest) {
            let _ = std::fs::remove_file(&tmp); // deduplicated: nothing to sync
        } else {
            self.pending.push((tmp, digest));
        }
        Ok((digest, size))
    }

    /// Makes every object of the batch durable, then names them.
    pub fn commit(mut self) -> Result<(), ObjectError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tmp_dir = self.store.root.join("tmp");
        let dir = File::open(&tmp_dir).map_err(io_err("cannot open", &tmp_dir))?;
        nix::unistd::syncfs(&dir).map_err(|e| io_err("cannot sync", &tmp_dir)(io::Error::from(e)))?;
        for (tmp, digest) in std::mem::take(&mut self.pending) {
            self.store.place(&tmp, &digest)?;
        }
        Ok(())
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl ObjectStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> Result<ObjectStore, ObjectError> {
        std::fs::create_dir_all(root.join("tmp")).map_err(io_err("cannot create", root))?;
        Ok(ObjectStore {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_string();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    fn temp(&self) -> Result<(File, PathBuf), ObjectError> {
        let dir = self.root.join("tmp");
        loop {
            let path = dir.join(format!("{}-{:016x}", std::process::id(), fastrand::u64(..)));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("cannot create", &dir)(e).into()),
            }
        }
    }

    /// Stores what `reader` yields; returns its digest and size.
    pub fn put(&self, reader: impl Read) -> Result<(Digest, u64), ObjectError> {
        let (tmp, digest, size) = self.write_temp(reader, true, &WriteLimits::default())?;
        self.place(&tmp, &digest)?;
        Ok((digest, size))
    }

    /// Copies `reader` into a new temp file, hashing; fsyncs it when `sync`.
    /// Runs of zeros become holes (a sparse file stays sparse in the store);
    /// `limits` are checked before the first byte and as the bytes go.
    fn write_temp(
        &self,
        mut reader: impl Read,
        sync: bool,
        limits: &WriteLimits,
    ) -> Result<(PathBuf, Digest, u64), ObjectError> {
        let (mut file, tmp) = self.temp()?;
        let dir = self.root.join("tmp");
        let result = (|| {
            limits.check(&dir, 0)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; BUF];
            let mut size = 0u64;
            let mut since_check = 0u64;
            loop {
                if limits.cancel.load(Ordering::Relaxed) {
                    return Err(ObjectError::Cancelled);
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("cannot read input for", &tmp)(e).into()),
                };
                hasher.update(&buf[..n]);
                if all_zero(&buf[..n]) {
                    file.seek(SeekFrom::Current(n as i64))
                        .map_err(io_err("cannot write", &tmp))?;
                } else {
                    since_check += n as u64;
                    if since_check >= FREE_CHECK_EVERY {
                        limits.check(&dir, since_check)?;
                        since_check = 0;
                    }
                    file.write_all(&buf[..n])
                        .map_err(|e| write_failed(e, &dir, &tmp, limits))?;
                }
                size += n as u64;
            }
            // A trailing hole: the length says where the file ends.
            file.set_len(size).map_err(|e| write_failed(e, &dir, &tmp, limits))?;
            if sync {
                file.sync_all().map_err(|e| write_failed(e, &dir, &tmp, limits))?;
            }
            Ok((Digest(hasher.finalize().into()), size))
        })();
        match result {
            Ok((digest, size)) => Ok((tmp, digest, size)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Moves a durable temp file to its object name (or drops it: deduplicated).
    fn place(&self, tmp: &Path, digest: &Digest) -> Result<(), ObjectError> {
        let dest = self.path(digest);
        if dest.is_file() {
            let _ = std::fs::remove_file(tmp);
            return Ok(());
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        std::fs::rename(tmp, &dest).map_err(io_err("cannot store", &dest))?;
        Ok(())
    }

    /// A set of puts made durable together: one `syncfs` for the lot instead
    /// of one fsync per object, which is what makes thousands of small files
    /// cheap. Objects get their names only after the sync, so a crash never
    /// leaves unsynced data under an object name.
    pub fn batch(&self) -> Batch<'_> {
        self.batch_with(WriteLimits::default())
    }

    /// A batch whose writes keep to `limits`.
    pub fn batch_with(&self, limits: WriteLimits) -> Batch<'_> {
        Batch {
            store: self,
            pending: Vec::new(),
            limits,
        }
    }

    pub fn put_file(&self, path: &Path) -> Result<(Digest, u64), ObjectError> {
        let f = File::open(path).map_err(io_err("cannot open", path))?;
        self.put(f)
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, ObjectError> {
        self.put(bytes).map(|(d, _)| d)
    }

    /// Reads a whole (small) object, verified.
    pub fn get_bytes(&self, d: &Digest) -> Result<Vec<u8>, ObjectError> {
        let path = self.path(d);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ObjectError::Missing(*d),
            _ => io_err("cannot read", &path)(e).into(),
        })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(ObjectError::Corrupt { digest: *d, actual });
        }
        Ok(bytes)
    }

    /// Copies object `d` to `dest`, verifying its hash on the way; `dest`
    /// only appears when the content is right.
    pub fn restore(&self, d: &Digest, dest: &Path) -> Result<u64, ObjectError> {
        let src = self.path(d);
        let mut input = File::open(&src).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ObjectError::Missing(*d),
            _ => io_err("cannot open", &src)(e).into(),
        })?;
        let parent = dest.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".trackside-restore-{:016x}", fastrand::u64(..)));
        let result = (|| {
            let mut out = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; BUF];
            let mut size = 0u64;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("cannot read", &src)(e).into()),
                };
                hasher.update(&buf[..n]);
                if all_zero(&buf[..n]) {
                    out.seek(SeekFrom::Current(n as i64))
                        .map_err(io_err("cannot write", &tmp))?;
                } else {
                    out.write_all(&buf[..n]).map_err(io_err("cannot write", &tmp))?;
                }
                size += n as u64;
            }
            out.set_len(size).map_err(io_err("cannot write", &tmp))?;
            let actual = Digest(hasher.finalize().into());
            if actual != *d {
                return Err(ObjectError::Corrupt { digest: *d, actual });
            }
            Ok(size)
        })();
        match result {
            Ok(size) => {
                std::fs::rename(&tmp, dest).map_err(io_err("cannot write", dest))?;
                Ok(size)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                // A corrupt object is useless, and left in place it would make
                // the next store of the right content look deduplicated.
                if matches!(e, ObjectError::Corrupt { .. }) {
                    let _ = std::fs::remove_file(&src);
                }
                Err(e)
            }
        }
    }

    /// Temp files of writers that no longer run (a crash mid-write): their
    /// names start with the writer's pid. Removed unless `dry_run`; returns
    /// how many and their bytes. A live pid keeps its files, even if reused.
    pub fn stale_temps(&self, dry_run: bool) -> (usize, u64) {
        let dir = self.root.join("tmp");
        let mut found = (0, 0);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if alive {
                continue;
            }
            let size = e.metadata().map_or(0, |m| m.len());
            if dry_run || std::fs::remove_file(e.path()).is_ok() {
                found.0 += 1;
                found.1 += size;
            }
        }
        found
    }

    /// Held shared by writers (store objects + record a manifest) and
    /// exclusively by garbage collection, so GC never sweeps an object that
    /// a running job has stored but not yet recorded.
    pub fn lock_shared(&self) -> Result<File, ObjectError> {
        self.lock(false)
    }

    pub fn lock_exclusive(&self) -> Result<File, ObjectError> {
        self.lock(true)
    }

    /// The lock lives as long as the returned file.
    fn lock(&self, exclusive: bool) -> Result<File, ObjectError> {
        let path = self.root.join(".lock");
        let f = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        let locked = if exclusive { f.lock() } else { f.lock_shared() };
        locked.map_err(io_err("cannot lock", &path))?;
        Ok(f)
    }

    /// Every object's digest (from the layout on disk; temp files excluded).
    pub fn list(&self) -> Result<Vec<Digest>, ObjectError> {
        let mut out = Vec::new();
        let dirs = std::fs::read_dir(&self.root).map_err(io_err("cannot read", &self.root))?;
        for dir in dirs.flatten() {
            let prefix = dir.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !dir.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(dir.path())
                .map_err(io_err("cannot read", &dir.path()))?
                .flatten()
            {
                if let Some(d) = Digest::parse(&format!("{prefix}{}", f.file_name().to_string_lossy())) {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes an object (a corrupt one, on repair).
    pub fn remove(&self, d: &Digest) -> Result<(), ObjectError> {
        let path = self.path(d);
        std::fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
        Ok(())
    }

    /// Rehashes an object: Ok(true) when intact.
    pub fn verify(&self, d: &Digest) -> Result<bool, ObjectError> {
        let path = self.path(d);
        let mut f = File::open(&path).map_err(io_err("cannot open", &path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF];
        loop {
            let n = f.read(&mut buf).map_err(io_err("cannot read", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Digest(hasher.finalize().into()) == *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_deduplicate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(&dir.path().join("objects")).expect("open");
        let d1 = store.put_bytes(b"hello").expect("put");
        let d2 = store.put_bytes(b"hello").expect("put");
        assert_eq!(d1, d2);
        assert_eq!(
            d1.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(&d1.to_string()), Some(d1));
        assert_eq!(store.get_bytes(&d1).expect("get"), b"hello");
        let out = dir.path().join("out");
        store.restore(&d1, &out).expect("restore");
        assert_eq!(std::fs::read(&out).expect("read"), b"hello");
        assert_eq!(
            std::fs::read_dir(dir.path().join("objects/tmp")).expect("tmp").count(),
            0,
            "no temp files left"
        );
    }

    /// Endless non-zero bytes that raise `cancel` after `after` reads.
    struct Endless {
        reads: usize,
        after: usize,
        cancel: Arc<AtomicBool>,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.reads == self.after {
                self.cancel.store(true, Ordering::Relaxed);
            }
            buf.fill(7);
            Ok(buf.len())
        }
    }

    #[test]
    fn a_cancelled_write_stops_at_its_next_buffer_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(&dir.path().join("objects")).expect("open");
        let limits = WriteLimits::default();
        let input = Endless {
            reads: 0,
            after: 3,
            cancel: limits.cancel.clone(),
        };
        match store.write_temp(input, false, &limits) {
            Err(ObjectError::Cancelled) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("objects/tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn a_write_keeps_the_free_space_margin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(&dir.path().join("objects")).expect("open");
        let free = free_bytes(dir.path()).expect("statvfs");
        let limits = WriteLimits {
            min_free: free + (1 << 40),
            ..WriteLimits::default()
        };
        match store.write_temp(&b"data"[..], false, &limits) {
            Err(ObjectError::DiskFull { margin, .. }) => assert_eq!(margin, free + (1 << 40)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("objects/tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn zeros_are_stored_as_holes_and_hash_as_zeros() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(&dir.path().join("objects")).expect("open");
        let mut content = vec![0u8; 8 << 20];
        content.extend_from_slice(b"end");
        let (d, size) = store.put(&content[..]).expect("put");
        assert_eq!((d, size), (Digest::of(&content), content.len() as u64));
        let meta = std::fs::metadata(store.path(&d)).expect("meta");
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "8 MiB of zeros took {} bytes",
            meta.blocks() * 512
        );
        let out = dir.path().join("out");
        store.restore(&d, &out).expect("restore");
        assert_eq!(std::fs::read(&out).expect("read"), content);
    }

    #[test]
    fn corruption_is_detected_and_nothing_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(&dir.path().join("objects")).expect("open");
        let d = store.put_bytes(b"precious content").expect("put");
        let path = store.path(&d);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[0] ^= 0x01;
        std::fs::write(&path, &bytes).expect("flip a byte");
        let out = dir.path().join("out");
        assert!(matches!(store.restore(&d, &out), Err(ObjectError::Corrupt { .. })));
        assert!(!out.exists(), "a corrupted object never lands");
        assert!(
            !store.contains(&d),
            "and is removed, so the right content can be stored again"
        );
        assert_eq!(store.put_bytes(b"precious content").expect("put again"), d);
        assert!(store.verify(&d).expect("verify"));
        std::fs::write(&path, &bytes).expect("flip again");
        assert!(!store.verify(&d).expect("verify"), "verify reports without removing");
        std::fs::write(&path, &bytes[..3]).expect("truncate");
        assert!(matches!(store.get_bytes(&d), Err(ObjectError::Corrupt { .. })));
        std::fs::remove_file(&path).expect("delete");
        assert!(matches!(store.restore(&d, &out), Err(ObjectError::Missing(_))));
    }
}
