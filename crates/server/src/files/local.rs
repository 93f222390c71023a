//! File bytes in a local directory: `<dir>/<last two characters of the id>/<id>`, written
//! first to `<dir>/tmp/<id>` and renamed into place on commit, so a reader never sees a
//! partial file and a crash leaves only temporaries (removed at the next start).

use std::io;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{ByteStream, FileStorage, Upload};

/// Bytes read from disk per chunk of a download.
const READ_CHUNK: usize = 64 * 1024;

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    /// Opens (creating) the directory and clears the temporaries a crash left.
    pub async fn open(dir: &Path) -> io::Result<LocalStorage> {
        let tmp = dir.join("tmp");
        match tokio::fs::remove_dir_all(&tmp).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        tokio::fs::create_dir_all(&tmp).await?;
        Ok(LocalStorage {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> io::Result<PathBuf> {
        // Ids are made by the server; anything else never names a path.
        if id.len() < 2 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        Ok(self.dir.join(&id[id.len() - 2..]).join(id))
    }
}

impl FileStorage for LocalStorage {
    fn create<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Upload>>> {
        async move {
            let target = self.path(id)?;
            let tmp = self.dir.join("tmp").join(id);
            let file = tokio::fs::File::create(&tmp).await?;
            let upload: Box<dyn Upload> = Box::new(LocalUpload {
                file: Some(file),
                tmp,
                target,
                done: false,
            });
            Ok(upload)
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        id: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<ByteStream>> {
        async move {
            let mut file = tokio::fs::File::open(self.path(id)?).await?;
            file.seek(io::SeekFrom::Start(start)).await?;
            let reader = tokio::io::AsyncReadExt::take(file, len);
            Ok(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match tokio::fs::remove_file(self.path(id)?).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        .boxed()
    }
}

struct LocalUpload {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Upload for LocalUpload {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match self.file.as_mut() {
                Some(f) => f.write_all(chunk).await,
                None => Err(io::Error::other("upload already committed")),
            }
        }
        .boxed()
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        async move {
            let mut file = self.file.take().expect("committed once");
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            if let Some(parent) = self.target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&self.tmp, &self.target).await?;
            self.done = true;
            Ok(())
        }
        .boxed()
    }
}

impl Drop for LocalUpload {
    /// An upload dropped before its commit (refused, failed, or its request gone)
    /// leaves nothing behind.
    fn drop(&mut self) {
        if !self.done {
            self.file.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
