//! Snapshot files in `<data>/snapshots`. A snapshot file is
//! `meta_len:u32 meta stream`: the openraft metadata then hamail-store's
//! table stream. `current.snap` is replaced only by rename, so it is always
//! whole; everything else in the directory is scratch.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hamail_store::{decode, encode};
use openraft::SnapshotMeta;

use crate::NodeInfo;

pub(crate) type Meta = SnapshotMeta<u64, NodeInfo>;

const CURRENT: &str = "current.snap";

#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    counter: AtomicU64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl SnapshotFiles {
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        // Scratch files of an earlier run are worthless now.
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()) != Some(CURRENT) {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(SnapshotFiles {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    pub(crate) fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    pub(crate) fn scratch_path(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{what}-{}-{n}.tmp", std::process::id()))
    }

    /// Writes a new current snapshot: header, then whatever `body` writes.
    /// Returns what `body` returned.
    pub(crate) fn write_current<T>(
        &self,
        meta_of: impl FnOnce(&mut dyn Write) -> std::io::Result<(Meta, T)>,
    ) -> std::io::Result<(Meta, T)> {
        // The meta is only known once the body is read from the store's own
        // consistent snapshot, so the body goes to a scratch file first and
        // is then prefixed with its meta in the final file.
        let body_path = self.scratch_path("body");
        let (meta, out) = {
            let f = File::create(&body_path).map_err(|e| io_err("creating", &body_path, e))?;
            let mut w = BufWriter::new(f);
            let r = meta_of(&mut w)?;
            w.flush()?;
            r
        };
        let final_tmp = self.scratch_path("snap");
        {
            let f = File::create(&final_tmp).map_err(|e| io_err("creating", &final_tmp, e))?;
            let mut w = BufWriter::new(f);
            let header = encode(&meta);
            w.write_all(&(header.len() as u32).to_be_bytes())?;
            w.write_all(&header)?;
            let mut body = BufReader::new(File::open(&body_path)?);
            std::io::copy(&mut body, &mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        let _ = fs::remove_file(&body_path);
        self.promote(&final_tmp)?;
        Ok((meta, out))
    }

    /// Makes a complete, synced file the current snapshot.
    pub(crate) fn promote(&self, path: &Path) -> std::io::Result<()> {
        let current = self.current_path();
        fs::rename(path, &current).map_err(|e| io_err("renaming", path, e))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Reads the header of a snapshot file; leaves `f` at the body.
    pub(crate) fn read_header(f: &mut impl Read) -> std::io::Result<Meta> {
        let mut len = [0u8; 4];
        f.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 64 << 20 {
            return Err(std::io::Error::other("snapshot header too large"));
        }
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        decode("snapshot meta", &buf).map_err(std::io::Error::other)
    }

    pub(crate) fn current_meta(&self) -> std::io::Result<Option<Meta>> {
        match File::open(self.current_path()) {
            Ok(mut f) => Ok(Some(Self::read_header(&mut BufReader::new(&mut f))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates an empty scratch file to receive a snapshot into.
    pub(crate) fn create_incoming(&self) -> std::io::Result<File> {
        let p = self.scratch_path("incoming");
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| io_err("creating", &p, e))
    }

    /// Copies a received snapshot into a synced scratch file, rewound.
    pub(crate) fn copy_in(&self, src: &mut File) -> std::io::Result<PathBuf> {
        src.seek(SeekFrom::Start(0))?;
        let p = self.scratch_path("installing");
        let mut out = File::create(&p).map_err(|e| io_err("creating", &p, e))?;
        std::io::copy(src, &mut out)?;
        out.sync_all()?;
        Ok(p)
    }

    /// Removes scratch files (received snapshots once installed).
    pub(crate) fn clean_scratch(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for entry in rd.flatten() {
                let path = entry.path();
                if path.extension().and_then(|x| x.to_str()) == Some("tmp") {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }
}
