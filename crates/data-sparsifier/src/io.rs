//! Files: atomic output (write a temp file in the target's directory, fsync it, then rename it
//! over the target; an interrupted run never leaves a half-written file where a good one was),
//! [`Staged`] sets of outputs committed all or nothing, and memory-mapped input ([`MappedFile`]).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written atomically. Nothing appears at the target path until
/// [`commit`](Self::commit); dropping it uncommitted removes the temp file.
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.txt");
/// let mut f = data_sparsifier::format::AtomicFile::create(&path).unwrap();
/// f.write_all(b"hello").unwrap();
/// assert!(!path.exists());
/// f.commit().unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"hello");
/// ```
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Bytes handed to the writer.
    written: u64,
    /// Bytes whose writeback to disk has been started (see [`WRITEBACK_STEP`]).
    kicked: u64,
}

/// Every this many bytes written, [`AtomicFile`] asks the kernel to start writing them to disk
/// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`: it starts writeback and does not wait for
/// it). The disk then works while the rest is computed, and the one fsync at the end waits only
/// for the tail: one durable sync per file, with its cost overlapped instead of paid at the end.
/// (Without it the kernel starts writeback only past `dirty_background_ratio`, 10% of RAM, so a
/// file of a few GB is written to disk only by the final fsync.)
const WRITEBACK_STEP: u64 = 32 << 20;

/// Starts writeback of `len` bytes of `file` from `offset`, without waiting (Linux; elsewhere
/// nothing: the final fsync writes everything). Best effort: an error is ignored, since the
/// fsync that follows reports any real one.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range takes an open file descriptor (borrowed from `file`, alive for
        // the call) and integers; it reads or writes no memory of this process. Its only effect
        // is to start writing already-written pages of the file to disk, which changes no data.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// The folder holding `path`: its parent, or `.` for a bare file name (whose parent is empty).
///
/// ```
/// use std::path::Path;
/// use data_sparsifier::format::parent_dir;
/// assert_eq!(parent_dir(Path::new("out/model.safetensors")), Path::new("out"));
/// assert_eq!(parent_dir(Path::new("model.safetensors")), Path::new("."));
/// ```
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

impl AtomicFile {
    /// Starts writing a temp file beside `target`.
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let dir = parent_dir(&target).to_path_buf();
        let file_name = target
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| {
                Error::io(
                    &target,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
                )
            })?;
        let mut n = 0u32;
        loop {
            let temp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
            {
                Ok(f) => {
                    return Ok(AtomicFile {
                        target,
                        temp,
                        writer: Some(BufWriter::with_capacity(1 << 20, f)),
                        written: 0,
                        kicked: 0,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(&temp, e)),
            }
        }
    }
    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }
    /// Flushes and fsyncs the temp file without committing it: a later [`commit`](Self::commit)
    /// only renames. Lets a caller get several files safely onto disk before putting any of them
    /// in place. On error the file stays uncommitted (dropping it removes the temp file).
    pub fn sync(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(|e| Error::io(&self.temp, e))?;
            w.get_ref()
                .sync_all()
                .map_err(|e| Error::io(&self.temp, e))?;
        }
        Ok(())
    }

    /// Flushes, fsyncs and renames the temp file over the target. If any step fails, the temp
    /// file is removed and the target is left as it was.
    pub fn commit(self) -> Result<()> {
        self.finish(true)
    }

    /// Like [`commit`](Self::commit), but never replaces anything: if the target path exists (a
    /// file, a directory, a symlink, even a dangling one) it fails with an [`Error::Io`] of kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists), removes the temp file and leaves the
    /// target alone.
    ///
    /// The temp file is hard-linked to the target, which the OS refuses atomically when the target
    /// exists, and then unlinked. On a filesystem without hard links (FAT, some network mounts) it
    /// checks right before a plain rename instead; a file created in that instant is replaced.
    ///
    /// ```
    /// use std::io::Write;
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("out.txt");
    /// std::fs::write(&path, b"old").unwrap();
    /// let mut f = data_sparsifier::format::AtomicFile::create(&path).unwrap();
    /// f.write_all(b"new").unwrap();
    /// assert!(f.commit_new().is_err());
    /// assert_eq!(std::fs::read(&path).unwrap(), b"old");
    /// assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    /// ```
    pub fn commit_new(self) -> Result<()> {
        self.finish(false)
    }

    fn finish(mut self, overwrite: bool) -> Result<()> {
        let result = self.place(overwrite);
        if result.is_err() {
            // `place` may have taken the writer, after which `Drop` no longer cleans up.
            self.writer = None;
            let _ = fs::remove_file(&self.temp);
        }
        result
    }

    /// The steps of committing; on error the temp file may still exist.
    fn place(&mut self, overwrite: bool) -> Result<()> {
        self.sync()?;
        // Closed before the rename (some platforms cannot rename an open file).
        drop(self.writer.take());
        let exists = || {
            Error::io(
                &self.target,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the file already exists"),
            )
        };
        if overwrite {
            fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        } else {
            match fs::hard_link(&self.temp, &self.target) {
                Ok(()) => {
                    // The target is in place; a failure here leaves only a stray temp file.
                    let _ = fs::remove_file(&self.temp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
                Err(_) => {
                    if fs::symlink_metadata(&self.target).is_ok() {
                        return Err(exists());
                    }
                    fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
                }
            }
        }
        if self.target.parent().is_some() {
            // Persist the rename itself; not every platform can open a directory, so this is best effort.
            if let Ok(d) = File::open(parent_dir(&self.target)) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(w) = self.writer.as_mut() else {
            return Err(std::io::Error::other("atomic file already committed"));
        };
        let n = w.write(buf)?;
        self.written += n as u64;
        // What the OS holds: everything but the writer's buffer.
        let in_file = self.written - w.buffer().len() as u64;
        if in_file - self.kicked >= WRITEBACK_STEP {
            start_writeback(w.get_ref(), self.kicked, in_file - self.kicked);
            self.kicked = in_file;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// How [`Staged::commit`] treats a file already at a target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Never replace anything ([`AtomicFile::commit_new`]): a target that exists, even one that
    /// appeared during the run, fails the commit.
    #[default]
    NoClobber,
    /// Replace existing targets ([`AtomicFile::commit`]).
    Replace,
}

/// Written, fsynced, uncommitted output files that are put in place together: what a
/// [`TensorSink`](crate::format::TensorSink) finishes into. Dropping it removes the temp files.
///
/// [`commit`](Self::commit) puts them in place in order (so the file a reader looks for first
/// should be last). If one fails, the files this commit already created are removed again and the
/// rest discarded: a failed commit leaves no new file. (A file that [`CommitMode::Replace`]
/// already replaced cannot be brought back.)
///
/// ```
/// use std::io::Write;
/// use data_sparsifier::format::{AtomicFile, CommitMode, Staged};
/// let dir = tempfile::tempdir().unwrap();
/// let (a, b) = (dir.path().join("a"), dir.path().join("b"));
/// let mut staged = Staged::default();
/// for p in [&a, &b] {
///     let mut f = AtomicFile::create(p).unwrap();
///     f.write_all(b"new").unwrap();
///     staged.push(f);
/// }
/// std::fs::write(&b, b"someone else's").unwrap(); // appears before the commit
/// assert!(staged.commit(CommitMode::NoClobber).is_err());
/// assert!(!a.exists()); // all or nothing
/// assert_eq!(std::fs::read(&b).unwrap(), b"someone else's");
/// ```
#[derive(Default)]
pub struct Staged {
    files: Vec<AtomicFile>,
}

impl Staged {
    /// One staged file.
    pub fn one(file: AtomicFile) -> Self {
        Staged { files: vec![file] }
    }
    /// Adds a file, committed after those already held.
    pub fn push(&mut self, file: AtomicFile) {
        self.files.push(file);
    }
    /// Adds another set, committed after this one's files.
    pub fn extend(&mut self, other: Staged) {
        self.files.extend(other.files);
    }
    /// The target paths, in commit order.
    pub fn targets(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(AtomicFile::target)
    }
    /// Puts every file in place, in order, all or nothing (see the type's docs). The error is
    /// the failing file's: an [`Error::Io`] of kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists) when [`CommitMode::NoClobber`] met
    /// an existing target.
    pub fn commit(self, mode: CommitMode) -> Result<()> {
        let mut created: Vec<PathBuf> = Vec::new();
        for file in self.files {
            let path = file.target().to_path_buf();
            let existed = fs::symlink_metadata(&path).is_ok();
            let committed = match mode {
                CommitMode::Replace => file.commit(),
                CommitMode::NoClobber => file.commit_new(),
            };
            if let Err(e) = committed {
                for p in &created {
                    let _ = fs::remove_file(p);
                }
                // The files not yet committed are dropped with the iterator: their temp files go.
                return Err(e);
            }
            if !existed {
                created.push(path);
            }
        }
        Ok(())
    }
}

/// A read-only memory map of a whole file. Files larger than RAM work: pages are read on demand.
pub struct MappedFile {
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only. An empty file maps to an empty slice.
    ///
    /// # Safety
    ///
    /// The file must not be truncated or modified, by this or any other process, while the map
    /// (or any slice borrowed from it) is alive. A truncation makes a later read of the lost pages
    /// raise SIGBUS; a modification changes bytes that safe code holds as `&[u8]`, which Rust
    /// assumes immutable. The OS cannot enforce this (advisory locks do not stop a writer), so the
    /// caller takes it on: tools that replace files by rename (this crate, the `safetensors`
    /// libraries, `cp` to a new name) never do either to the mapped inode. Use
    /// [`std::fs::read`] when the file may be written in place.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("f");
    /// std::fs::write(&path, b"abc").unwrap();
    /// // SAFETY: the file is this test's own and nothing writes it while it is mapped.
    /// let map = unsafe { data_sparsifier::format::MappedFile::open(&path) }.unwrap();
    /// assert_eq!(map.bytes(), b"abc");
    /// ```
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: read-only and private; the caller guarantees (this function's contract) that the
        // file is not truncated or modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile { map: Some(map) })
    }
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path.as_ref())?;
    f.write_all(bytes)
        .map_err(|e| Error::io(path.as_ref(), e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_file_leaves_the_old_target_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        fs::write(&path, b"good").unwrap();
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"half-writ").unwrap();
        }
        assert_eq!(fs::read(&path).unwrap(), b"good");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_failed_commit_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"data").unwrap();
        // A non-empty directory appears at the target: the rename fails.
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"").unwrap();
        assert!(f.commit().is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.bin"]);
        assert!(path.join("inside").exists());
    }

    #[test]
    fn commit_new_never_replaces_anything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let only = |name: &str| {
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names, [name]);
        };
        let new = |bytes: &[u8]| {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(bytes).unwrap();
            f.sync().unwrap();
            f
        };
        new(b"one").commit_new().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        only("x.bin");
        let e = new(b"two").commit_new().unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"one");
        only("x.bin");
        #[cfg(unix)]
        {
            // A dangling symlink counts as existing.
            fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("nowhere", &path).unwrap();
            assert!(new(b"three").commit_new().is_err());
            assert_eq!(fs::read_link(&path).unwrap(), Path::new("nowhere"));
            only("x.bin");
        }
        new(b"four").commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"four");
        only("x.bin");
    }
}
