//! Uploaded files: bytes in a [`FileStorage`] (a directory under the data dir on a single
//! node; PostgreSQL, shared by every node, in a cluster), metadata in the store.
//!
//! An upload is streamed: hashed, measured and held against the size limit and the
//! uploader's quota as it arrives, and kept only once whole and recorded. Downloads
//! are for the uploader and the members of a room the file was shared in, by Bearer
//! token or by a signed, expiring URL that a browser can use as it is.

mod local;
pub mod magic;
mod postgres;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use switchboard_protocol::now_millis;

pub use local::LocalStorage;
pub use postgres::{PostgresStorage, shared_url_key};

use crate::config::FilesConfig;
use crate::store::{FileRecord, Store, StoreError, WriteOp, WriteOutcome};

/// A file's bytes, in chunks.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Where file bytes live.
pub trait FileStorage: Send + Sync + 'static {
    /// Starts storing the bytes of file `id`: nothing is kept unless the upload is
    /// committed.
    fn create<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Upload>>>;
    /// `len` bytes of file `id` from `start`.
    fn open<'a>(
        &'a self,
        id: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<ByteStream>>;
    /// Removes file `id`; one already gone is no error.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<()>>;
}

/// The bytes of one file, being written.
pub trait Upload: Send {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;
    /// Keeps what was written. An upload dropped without a commit leaves nothing.
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>>;
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than the limit of {0} bytes (files.max_bytes)")]
    TooLarge(u64),
    #[error("the upload would pass your quota of {0} bytes (files.user_quota_bytes)")]
    QuotaExceeded(u64),
    #[error("{0}")]
    Invalid(String),
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error("storing the file failed: {0}")]
    Storage(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a signed link was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkError {
    Expired,
    Invalid,
}

/// A file as clients see it (the upload's answer; a shared file's message content).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    pub id: String,
    pub name: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A signed link, valid for `files.url_ttl_secs`, relative to the server's origin.
    pub url: String,
    pub uploaded_by: String,
    /// Milliseconds since the epoch.
    pub uploaded_at: u64,
}

/// An upload's name and declared type.
pub struct NewUpload {
    pub owner: String,
    pub name: String,
    pub declared: Option<String>,
}

pub struct Files {
    storage: Arc<dyn FileStorage>,
    store: Arc<dyn Store>,
    key: Vec<u8>,
    config: FilesConfig,
    /// Bytes of uploads in progress, per user, so that parallel uploads share the quota.
    in_flight: Mutex<HashMap<String, u64>>,
}

impl Files {
    /// Files in `<data_dir>/files`, links signed with `files.url_secret` or, without
    /// one, with a random key kept in `<data_dir>/files/url.key`.
    pub async fn open(
        data_dir: &Path,
        config: &FilesConfig,
        store: Arc<dyn Store>,
    ) -> io::Result<Files> {
        let dir = data_dir.join("files");
        let storage = LocalStorage::open(&dir).await?;
        let key = match &config.url_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => url_key(&dir.join("url.key")).await?,
        };
        Ok(Files::open_with(Arc::new(storage), key, config, store))
    }

    /// Files in `storage`, links signed with `url_key` as given (`files.url_secret` is
    /// not consulted). In a cluster every node passes the same storage and key (e.g.
    /// [`PostgresStorage`] and [`shared_url_key`]), so that any node serves a file and
    /// verifies a link that another made. The key should be at least 32 random bytes.
    pub fn open_with(
        storage: Arc<dyn FileStorage>,
        url_key: Vec<u8>,
        config: &FilesConfig,
        store: Arc<dyn Store>,
    ) -> Files {
        Files {
            storage,
            store,
            key: url_key,
            config: config.clone(),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    /// Stores an upload: streamed into storage with its sha256 and size, refused past
    /// the size limit or the quota (known ahead from `length` when given, else as the
    /// bytes come), its type checked against its magic, then recorded.
    pub async fn upload<S, E>(
        &self,
        new: NewUpload,
        length: Option<u64>,
        mut body: S,
    ) -> Result<FileRecord, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let max = self.config.max_bytes;
        if length.is_some_and(|n| n > max) {
            return Err(UploadError::TooLarge(max));
        }
        let quota = (self.config.user_quota_bytes > 0).then_some(self.config.user_quota_bytes);
        let used = match quota {
            Some(_) => self.store.usage(&new.owner).await?,
            None => 0,
        };
        let mut reserved = Reservation {
            files: self,
            user: &new.owner,
            bytes: 0,
        };
        if let Some(q) = quota {
            reserved.grow(length.unwrap_or(0), used, q)?;
        }
        let declared = magic::normalize(new.declared.as_deref());
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut sink = self.storage.create(&id).await?;
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(magic::HEAD);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(UploadError::TooLarge(max));
            }
            if let Some(q) = quota
                && size > reserved.bytes
            {
                reserved.grow(size - reserved.bytes, used, q)?;
            }
            if head.len() < magic::HEAD {
                let take = (magic::HEAD - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            sink.write(&chunk).await?;
        }
        let kind = magic::check(&declared, &head).map_err(UploadError::Invalid)?;
        let record = FileRecord {
            id,
            owner: new.owner.clone(),
            name: clean_name(&new.name),
            size,
            kind,
            sha256: hex::encode(hasher.finalize()),
            created_at: now_millis(),
        };
        // Recorded first, then kept: a request dropped in between leaves a record that
        // nobody knows the id of, which the orphan sweep removes; never bytes that no
        // record names.
        let op = WriteOp::InsertFile {
            file: record.clone(),
            quota,
        };
        match self.store.write(op).await? {
            WriteOutcome::Changed(true) => {}
            _ => return Err(UploadError::QuotaExceeded(quota.unwrap_or(0))),
        }
        if let Err(e) = sink.commit().await {
            let op = WriteOp::DeleteOrphanFile {
                id: record.id.clone(),
            };
            if let Err(e) = self.store.write(op).await {
                tracing::warn!(error = %e, "forgetting a file that was not kept failed");
            }
            return Err(e.into());
        }
        Ok(record)
    }

    /// Deletes a file just uploaded, whose request then failed.
    pub async fn discard(&self, f: &FileRecord) {
        let op = WriteOp::DeleteOrphanFile { id: f.id.clone() };
        if let Err(e) = self.store.write(op).await {
            tracing::warn!(error = %e, file = %f.id, "forgetting a discarded file failed");
        }
        if let Err(e) = self.storage.delete(&f.id).await {
            tracing::warn!(error = %e, file = %f.id, "removing a discarded file failed");
        }
    }

    /// What clients see of a file, with a fresh signed link.
    pub fn view(&self, f: &FileRecord, with_hash: bool) -> FileView {
        FileView {
            id: f.id.clone(),
            name: f.name.clone(),
            size: f.size,
            kind: f.kind.clone(),
            sha256: with_hash.then(|| f.sha256.clone()),
            url: self.url(&f.id),
            uploaded_by: f.owner.clone(),
            uploaded_at: f.created_at,
        }
    }

    /// `/api/files/<id>?expires=<unix seconds>&sig=<hex hmac-sha256(key, id.expires)>`.
    pub fn url(&self, id: &str) -> String {
        let expires = now_millis() / 1000 + self.config.url_ttl_secs;
        format!(
            "/api/files/{id}?expires={expires}&sig={}",
            self.sign(id, expires)
        )
    }

    fn sign(&self, id: &str, expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{id}.{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks a signed link's expiry and signature (in constant time).
    pub fn verify(&self, id: &str, expires: u64, sig: &str) -> Result<(), LinkError> {
        let given = hex::decode(sig).map_err(|_| LinkError::Invalid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{id}.{expires}").as_bytes());
        mac.verify_slice(&given).map_err(|_| LinkError::Invalid)?;
        if expires < now_millis() / 1000 {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    /// Whether `user` may read the file: its uploader, or a member of a room it was
    /// shared in.
    pub async fn may_read(&self, user: &str, f: &FileRecord) -> Result<bool, StoreError> {
        if f.owner == user {
            return Ok(true);
        }
        for room in self.store.file_rooms(&f.id).await? {
            if self.store.membership(&room, user).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `len` bytes of the file from `start`.
    pub async fn read(&self, id: &str, start: u64, len: u64) -> io::Result<ByteStream> {
        self.storage.open(id, start, len).await
    }

    /// Deletes files never shared within `files.orphan_ttl_secs` of their upload;
    /// answers how many.
    pub async fn sweep_orphans(&self) -> usize {
        let before = now_millis().saturating_sub(self.config.orphan_ttl_secs * 1000);
        let mut deleted = 0;
        loop {
            let batch = match self.store.orphan_files(before, 100).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "listing orphan files failed");
                    return deleted;
                }
            };
            let last = batch.len() < 100;
            for f in batch {
                // The record goes first, and only if the file is still unshared: a
                // share that came meanwhile keeps it.
                let op = WriteOp::DeleteOrphanFile { id: f.id.clone() };
                match self.store.write(op).await {
                    Ok(WriteOutcome::Changed(true)) => {}
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting an orphan file failed");
                        return deleted;
                    }
                }
                if let Err(e) = self.storage.delete(&f.id).await {
                    tracing::warn!(error = %e, file = %f.id, "removing an orphan file's bytes failed");
                }
                deleted += 1;
            }
            if last {
                break;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "orphan files removed");
        }
        deleted
    }
}

/// A user's share of the bytes in flight, given back when the upload ends however it
/// ends.
struct Reservation<'a> {
    files: &'a Files,
    user: &'a str,
    bytes: u64,
}

impl Reservation<'_> {
    /// Takes `n` more bytes, if the user's stored bytes (`used`) and its uploads in
    /// flight stay within `quota`.
    fn grow(&mut self, n: u64, used: u64, quota: u64) -> Result<(), UploadError> {
        let mut in_flight = self.files.in_flight.lock();
        let mine = in_flight.entry(self.user.to_string()).or_insert(0);
        if used + *mine + n > quota {
            if *mine == 0 {
                in_flight.remove(self.user);
            }
            return Err(UploadError::QuotaExceeded(quota));
        }
        *mine += n;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut in_flight = self.files.in_flight.lock();
        if let Some(n) = in_flight.get_mut(self.user) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                in_flight.remove(self.user);
            }
        }
    }
}

/// A file name as kept: its last path component, without control characters, at most
/// 255 bytes; `file` when nothing is left.
pub fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in base.trim().chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > 255 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() || out == "." || out == ".." {
        return "file".to_string();
    }
    out
}

/// The key of signed links, made once and kept beside the files.
async fn url_key(path: &Path) -> io::Result<Vec<u8>> {
    match tokio::fs::read(path).await {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_no_path_and_no_control_characters() {
        assert_eq!(clean_name("photo.png"), "photo.png");
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\Users\\a\\b.txt"), "b.txt");
        assert_eq!(clean_name("a\u{0}b\nc"), "abc");
        assert_eq!(clean_name(""), "file");
        assert_eq!(clean_name(".."), "file");
        assert_eq!(clean_name(&"é".repeat(200)).len(), 254);
    }
}
